"""Capability-kept metrics: perplexity by topic relevance, P@K, A/B accuracy."""

import pytest
import torch
from tiny import tiny_model

from steerlab import Window, add
from steerlab.evaluate import capability

TEXTS = ["The bride and groom said their vows at the wedding.", "The bus arrived at the station on time today.",
         "We booked the meeting room for the quarterly report review."]


def test_relevance_by_hand():
    assert capability.relevance("The bride and groom") == pytest.approx(2 / 4)
    assert capability.relevance("Nothing here") == 0.0


def test_token_nll_by_hand():
    lm = tiny_model("llama")
    nll = capability.token_nll(lm, TEXTS[:2], skip_first=3)
    for text, value in zip(TEXTS[:2], nll, strict=True):
        ids = lm.tokenizer(text)["input_ids"]
        with torch.no_grad():
            logp = lm.model(torch.tensor([ids])).logits[0].log_softmax(-1)
        manual = -sum(float(logp[t - 1, ids[t]]) for t in range(3, len(ids))) / (len(ids) - 3)
        assert value == pytest.approx(manual, abs=1e-4)


def test_token_nll_in_chat_frame_scores_only_the_text():
    lm = tiny_model("llama")
    text = TEXTS[0]
    value = capability.token_nll(lm, [text], user_prompt="Write a sentence.")[0]
    prompt = lm.render("Write a sentence.").text
    ids = lm.tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
    start = len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    manual = -sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids))) / (len(ids) - start)
    assert value == pytest.approx(manual, abs=1e-4)


def test_perplexity_ratio_is_one_without_steering_effect():
    lm = tiny_model("llama")
    zero = add(1, torch.ones(32), strength=0.0, window=Window.all())
    res = capability.perplexity_ratio_by_relevance(lm, TEXTS, [zero])
    assert all(r == pytest.approx(1.0) for _, r in res.per_text)
    assert sum(res.count) == len(TEXTS)
    strong = add(1, torch.ones(32) * 5, window=Window.all())
    res = capability.perplexity_ratio_by_relevance(lm, TEXTS, [strong])
    assert any(abs(r - 1.0) > 1e-3 for _, r in res.per_text)


def test_next_token_accuracy_and_ab_accuracy():
    lm = tiny_model("llama")
    facts = capability.load_facts()
    assert len(facts) >= 40
    acc = capability.next_token_accuracy(lm, facts[:8])
    assert set(acc) == {1, 5} and 0 <= acc[1] <= acc[5] <= 1
    quiz = capability.load_general_knowledge()
    assert len(quiz) >= 40
    res = capability.ab_accuracy(lm, quiz[:6])
    assert set(res) == {0.0} and 0 <= res[0.0] <= 1
