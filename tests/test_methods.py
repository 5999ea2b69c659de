"""ActAdd and CAA: faithful recipes, checked against independent computations."""

import pytest
import torch
from tiny import tiny_model

from steerlab import capture, datasets
from steerlab.methods import actadd, caa


def test_actadd_vector_is_padded_difference_at_block_input():
    lm = tiny_model("llama")
    vec = actadd.extract(lm, "I love sunny days", "I hate", 2, coeff=3.0)
    pos = lm.tokenizer("I love sunny days")["input_ids"]
    neg = lm.tokenizer("I hate")["input_ids"]
    space = actadd.space_token_id(lm.tokenizer)
    n = len(pos)
    assert vec.meta["n_positions"] == n and len(neg) < n
    neg = neg + [space] * (n - len(neg))
    a = capture(lm, [pos], 1, positions="all")[1]  # output of block 1 == input of block 2
    b = capture(lm, [neg], 1, positions="all")[1]
    torch.testing.assert_close(vec.layers[2], 3.0 * (a - b), atol=1e-5, rtol=1e-5)
    assert vec.site == "input" and vec.apply == "front"
    # Over the common token prefix ("I") the difference is exactly zero, however a batch rounds it.
    common = next(i for i, (x, y) in enumerate(zip(pos, neg, strict=True)) if x != y)
    assert common >= 1 and bool((vec.layers[2][:common] == 0).all()) and bool(vec.layers[2][common].ne(0).any())


def test_actadd_injects_exactly_the_first_n_positions_of_the_prompt_pass():
    lm = tiny_model("gpt2")
    vec = actadd.extract(lm, "I love", "I hate", 2, coeff=4.0)
    n = vec.meta["n_positions"]
    steer = actadd.ActAddSteering(vec)
    prompts = ["The quick brown fox jumps over", "Paris is the capital of France"]
    batch = actadd.prepare(lm, prompts, steer)
    seen = []
    hook = lm.blocks[2].register_forward_pre_hook(
        lambda m, a, k: seen.append((a[0] if a else k["hidden_states"]).clone()), with_kwargs=True)
    try:
        with lm.steer(steer.for_batch(batch), batch=batch):
            lm.model.generate(**batch.model_inputs(), max_new_tokens=3, do_sample=False, eos_token_id=None,
                              pad_token_id=lm.tokenizer.pad_token_id)
        steered = seen[:]
        seen.clear()
        lm.model.generate(**batch.model_inputs(), max_new_tokens=3, do_sample=False, eos_token_id=None,
                          pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        hook.remove()
    # The pre-hook sees the input before the steering hook (registered later) adds S, so read the
    # block's input as the *next* forward sees it: compare block-2 inputs of the prompt pass.
    with lm.steer(steer.for_batch(batch), batch=batch):
        after = capture(lm, batch, 2, positions="all", site="input")[2]
    before = capture(lm, batch, 2, positions="all", site="input")[2]
    lengths = batch.lengths.tolist()
    changed = (after - before).abs().amax(-1) > 0
    expected = torch.cat([(torch.arange(length) < n) & (torch.arange(length) > 0) | (torch.arange(length) == 0)
                          & bool(vec.layers[2][0].abs().max() > 0) for length in lengths])
    assert torch.equal(changed, expected)
    assert len(steered) == 3  # prompt pass + 2 decoding steps


def test_actadd_overlay_refuses_short_prompt_and_pad_mode_fits():
    lm = tiny_model("llama")
    vec = actadd.extract(lm, "I love sunny days and flowers", "I hate", 1)
    with pytest.raises(ValueError, match="at least"):
        lm.generate(["Hi"], steering=actadd.ActAddSteering(vec), chat=False, max_new_tokens=2)
    pad = actadd.ActAddSteering(vec, mode="pad")
    out = lm.generate(["Hi"], steering=pad, chat=False, max_new_tokens=2)
    assert len(out) == 1
    batch = actadd.prepare(lm, ["Hi"], pad)
    assert int(batch.lengths[0]) == vec.meta["n_positions"] + len(lm.tokenizer("Hi")["input_ids"])


def test_actadd_zero_coefficient_is_unmodified():
    lm = tiny_model("qwen2")
    vec = actadd.extract(lm, "I love", "I hate", 1, coeff=0.0)
    prompts = ["The quick brown fox jumps over", "Paris is the capital of France and"]
    assert lm.generate(prompts, chat=False, max_new_tokens=5, steering=actadd.ActAddSteering(vec)) == \
        lm.generate(prompts, chat=False, max_new_tokens=5)


PAIRS = [
    datasets.ContrastivePair("Do you like rain?\n\nChoices:\n(A) Yes\n(B) No", "(A)", "(B)"),
    datasets.ContrastivePair("Is the sky green?\n\nChoices:\n(A) Yes\n(B) No", "(B)", "(A)"),
    datasets.ContrastivePair("Pick one.\n\nChoices:\n(A) love\n(B) hate", "(A)", "(B)"),
]


def _reference_caa(lm, pairs, layer):
    """A plain loop: one forward per prompt, hidden_states from transformers, letter found by search."""
    diffs = []
    for p in pairs:
        acts = []
        for answer in (p.positive, p.negative):
            text = lm.render(p.prompt, assistant_prefix=answer).text
            ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            letter = answer.strip()[1]
            idx = max(i for i, t in enumerate(ids) if letter in lm.tokenizer.decode([t]))
            with torch.no_grad():
                hs = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            acts.append(hs[layer + 1][0, idx])
        diffs.append(acts[0] - acts[1])
    return torch.stack(diffs).mean(0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_caa_equals_plain_loop(family):
    lm = tiny_model(family)
    # hidden_states[-1] has the final norm applied in transformers, so compare inner blocks.
    vec = caa.extract(lm, PAIRS, [0, 2], batch_size=2, counterbalance=False)
    both = caa.extract(lm, PAIRS, [0, 2], batch_size=2)  # default: counterbalanced over swapped options
    assert both.meta["counterbalanced"] and not vec.meta["counterbalanced"]
    swapped = datasets.counterbalanced(PAIRS)
    for layer in (0, 2):
        ref = _reference_caa(lm, PAIRS, layer)
        cos = torch.nn.functional.cosine_similarity(vec.layers[layer], ref, dim=0)
        assert cos > 0.9999
        torch.testing.assert_close(vec.layers[layer], ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(both.layers[layer], _reference_caa(lm, swapped, layer), atol=1e-4, rtol=1e-4)


def test_caa_alternative_methods_point_the_same_way():
    lm = tiny_model("llama")
    mean = caa.extract(lm, PAIRS, 2)
    for method in ("pca", "probe"):
        other = caa.extract(lm, PAIRS, 2, method=method)
        assert other.method == f"caa-{method}"
        d = other.layers[2]
        diffs_proj = torch.nn.functional.cosine_similarity(d, mean.layers[2], dim=0)
        assert diffs_proj > 0  # signed to agree with the mean difference
    with pytest.raises(ValueError):
        caa.extract(lm, PAIRS, 2, method="nope")


def test_caa_normalisation_to_mean_norm():
    lm = tiny_model("llama")
    a = caa.extract(lm, PAIRS, 2)
    b = a * 3.0
    na, nb = caa.normalise_to_mean_norm([a, b])
    assert abs(na.norms()[2] - nb.norms()[2]) < 1e-4
    assert abs(na.norms()[2] - 2 * a.norms()[2]) < 1e-3


def test_answer_letter_position_from_offsets():
    lm = tiny_model("llama")
    rendered, idx = caa.render_answer(lm, PAIRS[0], "(A)", chat=True, system=None)
    ids = lm.tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
    assert "A" in lm.tokenizer.decode([ids[idx]])
    assert idx == len(ids) - 2 or lm.tokenizer.decode(ids[idx:]).startswith("A")
