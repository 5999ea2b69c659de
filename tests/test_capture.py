"""Capture invariants on tiny random models of every supported family."""

import pytest
import torch
from tiny import FAMILIES, tiny_model

from steerlab import capture
from steerlab.capture import capture_contrast

PROMPTS = ["The quick brown fox", "I love sunny days and I hate the rain.", "Paris", "Choices: (A) yes (B) no."]


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_found(family):
    lm = tiny_model(family)
    assert lm.num_layers == 4
    assert lm.hidden_size == 32


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_one_by_one_and_padding_sides(family):
    lm = tiny_model(family)
    layers = [1, 3]
    left = capture(lm, PROMPTS, layers, positions="all", padding_side="left", batch_size=4)
    right = capture(lm, PROMPTS, layers, positions="all", padding_side="right", batch_size=4)
    single = {layer: torch.cat([capture(lm, [p], layers, positions="all")[layer] for p in PROMPTS]) for layer in layers}
    for layer in layers:
        n_tokens = sum(len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS)
        assert left[layer].shape == (n_tokens, 32)
        torch.testing.assert_close(left[layer], single[layer], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(right[layer], single[layer], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_early_exit_equals_full_pass(family):
    lm = tiny_model(family)
    for site in ("output", "input"):
        fast = capture(lm, PROMPTS, [0, 2], site=site, early_exit=True)
        full = capture(lm, PROMPTS, [0, 2], site=site, early_exit=False)
        for layer in (0, 2):
            assert torch.equal(fast[layer], full[layer])


def test_early_exit_really_stops():
    lm = tiny_model("llama")
    ran = []
    handle = lm.blocks[3].register_forward_hook(lambda *a: ran.append(1))
    try:
        capture(lm, PROMPTS, [1])
        assert ran == []
        capture(lm, PROMPTS, [1], early_exit=False)
        assert ran
    finally:
        handle.remove()


def test_input_site_is_previous_output():
    lm = tiny_model("qwen2")
    inp = capture(lm, PROMPTS, 2, site="input", positions="all")[2]
    out = capture(lm, PROMPTS, 1, site="output", positions="all")[1]
    torch.testing.assert_close(inp, out)


def test_position_specs():
    lm = tiny_model("llama")
    full = capture(lm, PROMPTS, 2, positions="all", batch_size=2)[2]
    lengths = [len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS]
    offsets = [sum(lengths[:i]) for i in range(len(PROMPTS))]
    last = capture(lm, PROMPTS, 2, positions="last")[2]
    assert last.shape == (4, 32)
    ends = [o + n - 1 for o, n in zip(offsets, lengths, strict=True)]
    torch.testing.assert_close(last, full[ends], atol=1e-5, rtol=1e-5)
    first = capture(lm, PROMPTS, 2, positions=0)[2]
    torch.testing.assert_close(first, full[offsets], atol=1e-5, rtol=1e-5)
    per_row = capture(lm, PROMPTS, 2, positions=[0, 1, -1, 2])[2]
    idx = [offsets[0], offsets[1] + 1, offsets[2] + lengths[2] - 1, offsets[3] + 2]
    torch.testing.assert_close(per_row, full[idx], atol=1e-5, rtol=1e-5)
    masks = [[True, False, True], [False, True], [True], [False, False, False, True]]
    masked = capture(lm, PROMPTS, 2, positions=masks)[2]
    idx = [offsets[0], offsets[0] + 2, offsets[1] + 1, offsets[2], offsets[3] + 3]
    torch.testing.assert_close(masked, full[idx], atol=1e-5, rtol=1e-5)
    with pytest.raises(IndexError):
        capture(lm, PROMPTS, 2, positions=50)


@pytest.mark.parametrize("family", FAMILIES)
def test_contrast_with_shared_prefix_equals_full_sequences(family):
    """capture_contrast (prefix once, both continuations from its cache) == capture on full rows."""
    lm = tiny_model(family)
    tok = lambda text: lm.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    first, second, r1, r2 = [], [], [], []
    for i, prompt in enumerate(PROMPTS + ["Pick one of these at last: (A) love or (B) hate."]):
        a, b = tok(prompt + " answer (A) yes"), tok(prompt + " answer (B) no, not that one")
        first.append(a), second.append(b)
        r1.append(len(a) - 1 - i % 2), r2.append(len(b) - 1)
    first.append(tok("Rain")), second.append(tok("Sun today")), r1.append(0), r2.append(1)  # nothing shared
    ours = capture_contrast(lm, first, second, r1, r2, [1, 3], batch_size=2)
    full = capture(lm, first + second, [1, 3], positions=r1 + r2, batch_size=3)
    n = len(first)
    for layer in (1, 3):
        torch.testing.assert_close(ours[0][layer], full[layer][:n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours[1][layer], full[layer][n:], atol=1e-4, rtol=1e-4)


def test_contrast_refuses_bad_read_positions():
    lm = tiny_model("llama")
    with pytest.raises(IndexError, match="outside second sequence 0"):
        capture_contrast(lm, [[1, 2, 3]], [[1, 2]], [2], [5], 1)
    with pytest.raises(ValueError, match="same positive number"):
        capture_contrast(lm, [[1, 2, 3]], [], [2], [], 1)
