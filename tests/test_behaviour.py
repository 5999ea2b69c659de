"""Behaviour scores: whole-answer log-probabilities, prefix sharing == full recomputation."""

import math

import pytest
import torch
from tiny import tiny_model

from steerlab import datasets
from steerlab.evaluate import Variant, answer_logprobs, p_matching, propensity
from steerlab.evaluate.sweep import layer_sweep
from steerlab.methods import caa

PAIRS = [
    datasets.ContrastivePair("Do you like rain?\n\nChoices:\n(A) Yes\n(B) No", "(A)", "(B)"),
    datasets.ContrastivePair("Is the sky green?\n\nChoices:\n(A) Yes\n(B) No", "(B)", "(A)"),
    datasets.ContrastivePair("Is it?", " Yes", " No"),
    datasets.ContrastivePair("How was it?", "It was wonderful.", "Awful, really."),
]


def test_scores_from_logprobs_by_hand():
    lp = torch.tensor([[[math.log(0.3), math.log(0.1)], [math.log(0.2), math.log(0.6)]]])
    torch.testing.assert_close(p_matching(lp), torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(propensity(lp), torch.tensor([[math.log(3.0), math.log(1 / 3)]]))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "opt"])
@pytest.mark.parametrize("chat", [True, False])
def test_prefix_sharing_equals_full_recomputation(family, chat):
    lm = tiny_model(family)
    vec = caa.extract(lm, PAIRS, [1, 2], progress=False)
    variants = [Variant(0.0), Variant(3.0, 1), Variant(-2.0, 2), Variant(1.5)]
    shared = answer_logprobs(lm, PAIRS, vec, variants, chat=chat)
    full = answer_logprobs(lm, PAIRS, vec, variants, chat=chat, share_prefix=False)
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=1e-4)
    assert (shared[1] - shared[0]).abs().max() > 1e-3  # steering moved the scores


def test_whole_answer_logprob_by_hand():
    lm = tiny_model("llama")
    lp = answer_logprobs(lm, PAIRS[3:], chat=True)[0, 0]
    for k, answer in enumerate((PAIRS[3].positive, PAIRS[3].negative)):
        prompt = lm.render(PAIRS[3].prompt).text
        ids = lm.tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        n_prompt = len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = lm.model(torch.tensor([ids])).logits[0].log_softmax(-1)
        manual = sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
        assert abs(manual - float(lp[k])) < 1e-4


def test_sweep_table_and_files(tmp_path):
    lm = tiny_model("llama")
    result = layer_sweep(lm, PAIRS, PAIRS, [0, 1, 2], [-2.0, 2.0], dataset="tiny")
    assert set(result.p_matching) == {"0", "1", "2"} and set(result.null_effect) == {"0", "1", "2"}
    beating = [k for k in (0, 1, 2) if result.beats_null(k)]
    # Recommended: the largest effect among layers that beat the null (all layers, flagged, when none does).
    assert result.recommended_layer in (beating or [0, 1, 2])
    if not beating:
        assert result.how_chosen.startswith("NO LAYER BEATS THE NULL")
    path = result.save(tmp_path)
    assert "| layer |" in path.read_text() and "beats null" in path.read_text()
    assert (tmp_path / "sweep-tiny.png").stat().st_size > 5000


def test_open_answers_rewrites_choices():
    pairs = datasets.to_open_answers(datasets.builtin("sentiment")[:4])
    assert all("Choices" not in p.prompt and not p.is_multiple_choice for p in pairs)
    assert pairs[0].positive.startswith("It was wonderful")
