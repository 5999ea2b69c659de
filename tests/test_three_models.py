"""Every method on the two other built-in real families: Gemma 3 270M and Qwen2.5-Coder-0.5B."""

import functools

import pytest
import torch

import steerlab
from steerlab import datasets
from steerlab.evaluate import answer_logprobs
from steerlab.methods import actadd, caa

pytestmark = pytest.mark.slow
MODELS = ["gemma3-270m", "qwen2.5-coder-0.5b"]


@functools.cache
def _model(name):
    try:
        return steerlab.load_model(name)
    except steerlab.ModelNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("name", MODELS)
def test_caa_actadd_and_scoring(name):
    lm = _model(name)
    pairs = datasets.builtin("sentiment")[:6]
    vec = caa.extract(lm, pairs, [4, 8], progress=False)
    assert vec.hidden_size == lm.hidden_size and all(n > 0 for n in vec.norms().values())
    # The read token holds the answer letter on every tokenizer (Qwen2 merges "(A" into one token).
    rendered, idx = caa.render_answer(lm, pairs[0], pairs[0].positive, chat=True, system=None)
    ids = lm.tokenizer(rendered.text, add_special_tokens=not rendered.text.startswith(lm.tokenizer.bos_token or "\0"))
    assert pairs[0].positive[1] in lm.tokenizer.decode([ids["input_ids"][idx]])
    shared = answer_logprobs(lm, pairs, vec, [0.0, 4.0])
    full = answer_logprobs(lm, pairs, vec, [0.0, 4.0], share_prefix=False)
    torch.testing.assert_close(shared, full, atol=2e-3, rtol=2e-3)
    love = actadd.extract(lm, "Love", "Hate", 3, coeff=5.0, chat=lm.has_chat_template)
    out = lm.generate(["Tell me about your weekend, in one sentence."], steering=actadd.ActAddSteering(love),
                      max_new_tokens=8)
    assert out[0]


def test_qwen_merged_letter_scoring_by_hand():
    lm = _model("qwen2.5-coder-0.5b")
    pair = datasets.builtin("refusal")[0]
    prompt = lm.render(pair.prompt).text
    toks = lm.tokenizer.tokenize(prompt + "(A)")
    assert "(A" in toks[-2:]  # the merge that a hard-coded letter token id would miss
    lp = answer_logprobs(lm, [pair], chat=True)[0, 0]
    for k, answer in enumerate((pair.positive, pair.negative)):
        ids = lm.tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        n_prompt = len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        manual = sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
        assert abs(manual - float(lp[k])) < 1e-3


@pytest.mark.parametrize("name", ["smollm2-135m", *MODELS])
def test_landmarks_found_in_token_ids_match_the_rendered_prompt(name):
    """The vLLM front end sees token ids only: the user's text and the assistant turn it finds there
    must be where steerlab's own rendering puts them (with and without a system prompt, and with
    chat-template markup inside the user's text). Templates whose headers cannot be found give None,
    and the windows then fall back to the raw-text rules."""
    from steerlab.tokens import (
        assistant_header_ids,
        encode_texts,
        find_assistant_start,
        find_user_start,
        render_prompt,
        user_header_ids,
    )

    tok = _model(name).tokenizer
    user_header, assistant_header = user_header_ids(tok), assistant_header_ids(tok)
    if name != "gemma3-270m":
        assert len(user_header) >= 2 and len(assistant_header) >= 2
    for prompt, system in [("Tell me about your weekend.", None), ("One\n\nTwo <|im_start|>user\n", None),
                           ("Hi there", "Be brief.\n\nReally.")]:
        batch = encode_texts(tok, [render_prompt(tok, prompt, system=system)])
        ids = batch.input_ids[0].tolist()
        a = find_assistant_start(ids, assistant_header)
        u = find_user_start(ids, user_header, a)
        if assistant_header:
            assert a == int(batch.assistant_start[0])
        if user_header:
            assert u == int(batch.user_start[0]), (prompt, system)
        else:
            assert u is None
