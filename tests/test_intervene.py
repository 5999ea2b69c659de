"""Intervention invariants: cached == uncached, zero == unmodified, per-row == alone, exact windows."""

import threading

import pytest
import torch
from tiny import FAMILIES, tiny_model

import steerlab
from steerlab import Window, add, apply_fn, capture, clamp, project_out, steer

PROMPTS = ["The quick brown fox jumps", "I love sunny days", "Paris is the capital of France and"]


def _interventions(lm, strength=1.0):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(lm.hidden_size, generator=g) * 4
    per_pos = torch.randn(3, lm.hidden_size, generator=g) * 4
    u = torch.randn(lm.hidden_size, generator=g)
    return {
        "add": add(1, v, strength=strength, window=Window.assistant()),
        "add_per_position": add(1, per_pos, strength=strength, window=Window.span(0, 3), site="input"),
        "project_out": project_out(2, u, strength=strength, window=Window.onward(2)),
        "clamp": clamp(1, u, 5.0, strength=strength, window=Window.generated()),
        "function": apply_fn(2, lambda h, ctx: h * (1 + ctx.strength[:, None, None]), strength=strength,
                             window=Window.assistant()),
    }


def _uncached_logits(lm, batch, new_tokens, ivs):
    """Re-run the whole growing sequence without a cache, teacher-forcing the cached run's tokens."""
    ids, mask = batch.input_ids, batch.attention_mask
    out = []
    with steer(lm, ivs, batch=batch):
        for step in range(new_tokens.shape[1]):
            logits = lm.model(**lm.forward_inputs(ids, mask)).logits[:, -1]
            out.append(logits)
            ids = torch.cat([ids, new_tokens[:, step: step + 1]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


def _cached_run(lm, batch, ivs, steps=5):
    with steer(lm, ivs, batch=batch):
        res = lm.model.generate(**batch.model_inputs(), max_new_tokens=steps, do_sample=False,
                                output_logits=True, return_dict_in_generate=True,
                                pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=None,
                                temperature=None, top_p=None, top_k=None)
    width = batch.input_ids.shape[1]
    return res.sequences[:, width:], torch.stack(res.logits, 1)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "gpt_neox", "opt", "qwen3", "phi3"])
@pytest.mark.parametrize("kind", ["add", "add_per_position", "project_out", "clamp", "function"])
def test_cached_generation_equals_uncached(family, kind):
    lm = tiny_model(family)
    batch = lm.prepare(PROMPTS, chat=True)
    iv = _interventions(lm)[kind]
    tokens, cached = _cached_run(lm, batch, [iv])
    uncached = _uncached_logits(lm, batch, tokens, [iv])
    torch.testing.assert_close(cached, uncached, atol=2e-4, rtol=2e-4)
    _, plain = _cached_run(lm, batch, [])
    assert (cached - plain).abs().max() > 1e-3, "the intervention had no effect, so the test proves nothing"


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_strength_is_bit_exact(family):
    lm = tiny_model(family)
    batch = lm.prepare(PROMPTS, chat=True)
    plain = lm.model(**batch.model_inputs()).logits
    for name, iv in _interventions(lm, strength=0.0).items():
        if name == "function":
            continue  # a user function decides what strength 0 means
        with steer(lm, iv, batch=batch):
            steered = lm.model(**batch.model_inputs()).logits
        assert torch.equal(plain, steered), name
    with steer(lm, batch=batch):
        assert torch.equal(plain, lm.model(**batch.model_inputs()).logits)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_per_row_strength_equals_rows_alone(family):
    lm = tiny_model(family)
    strengths = [2.0, 0.0, -1.5]
    batch = lm.prepare(PROMPTS, chat=True)
    for name, iv in _interventions(lm).items():
        iv_rows = iv.scaled(1.0)
        iv_rows.strength = torch.tensor(strengths)
        tokens, together = _cached_run(lm, batch, [iv_rows])
        for i, (prompt, s) in enumerate(zip(PROMPTS, strengths, strict=True)):
            alone_batch = lm.prepare([prompt], chat=True)
            _, alone = _cached_run(lm, alone_batch, [iv.scaled(s)])
            torch.testing.assert_close(together[i], alone[0], atol=2e-4, rtol=2e-4, msg=name)


def test_per_position_add_touches_exactly_the_window():
    lm = tiny_model("llama")
    n = 3
    vec = torch.ones(n, lm.hidden_size)
    plain = capture(lm, PROMPTS, 1, positions="all")[1]
    with steer(lm, add(1, vec, window=Window.span(0, n))):
        steered = capture(lm, PROMPTS, 1, positions="all")[1]
    changed = (steered - plain).abs().amax(-1) > 0
    lengths = [len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS]
    expected = torch.cat([torch.arange(length) < n for length in lengths])
    assert torch.equal(changed, expected)


def test_window_masks_during_generation():
    """Record which tokens each forward call steers: prompt window 0..n-1 only in the prompt pass,
    'generated' only in decoding steps, 'assistant' in both."""
    lm = tiny_model("llama")
    batch = lm.prepare(PROMPTS, chat=True)
    seen = {"front": [], "generated": [], "assistant": []}

    def recorder(name):
        def fn(h, ctx):
            seen[name].append(ctx.mask.sum(-1).tolist())
            return h
        return fn

    ivs = [apply_fn(1, recorder("front"), window=Window.span(0, 4)),
           apply_fn(1, recorder("generated"), window=Window.generated()),
           apply_fn(1, recorder("assistant"), window=Window.assistant())]
    with steer(lm, ivs, batch=batch):
        lm.model.generate(**batch.model_inputs(), max_new_tokens=4, do_sample=False, eos_token_id=None,
                          pad_token_id=lm.tokenizer.pad_token_id)
    assert seen["front"] == [[4, 4, 4]] + [[0, 0, 0]] * 3
    assert seen["generated"] == [[0, 0, 0]] + [[1, 1, 1]] * 3
    expected_prompt = (batch.lengths - batch.assistant_start).tolist()
    assert seen["assistant"] == [expected_prompt] + [[1, 1, 1]] * 3


def test_hooks_removed_even_on_error():
    lm = tiny_model("llama")
    before = [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in lm.blocks]
    with pytest.raises(RuntimeError), steer(lm, add(1, torch.ones(32))):
        raise RuntimeError("boom")
    after = [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in lm.blocks]
    assert before == after


def test_other_threads_are_not_steered():
    lm = tiny_model("llama")
    batch = lm.prepare(PROMPTS, chat=False)
    plain = lm.model(**batch.model_inputs()).logits
    inside, other = threading.Event(), {}

    def worker():
        inside.wait()
        other["logits"] = lm.model(**batch.model_inputs()).logits

    t = threading.Thread(target=worker)
    t.start()
    with steer(lm, add(1, torch.ones(32) * 10)):
        inside.set()
        t.join()
        steered = lm.model(**batch.model_inputs()).logits
    assert torch.equal(other["logits"], plain)
    assert not torch.allclose(steered, plain)


def test_bad_interventions_are_refused():
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="hidden size"), steer(lm, add(1, torch.ones(7))):
        pass
    with pytest.raises(IndexError, match="out of range"), steer(lm, add(9, torch.ones(32))):
        pass
    with pytest.raises(ValueError, match="NaN"):
        add(1, torch.tensor([float("nan")] * 32))
    with pytest.raises(ValueError, match="needs the prompt batch"), \
            steer(lm, add(1, torch.ones(32), window=Window.assistant())):
        pass


def test_generate_helper_with_vector():
    lm = tiny_model("llama")
    vec = steerlab.SteeringVector({1: torch.randn(32) * 8}, model_name=lm.name, hidden_size=32)
    plain = lm.generate(PROMPTS, max_new_tokens=6)
    steered = lm.generate(PROMPTS, max_new_tokens=6, steering=vec)
    zero = lm.generate(PROMPTS, max_new_tokens=6, steering=vec * 0.0)
    assert zero == plain
    assert steered != plain


def test_steer_and_generate_accept_the_same_steering_objects():
    """ActAdd steering works in lm.steer (with the batch it steers) as in lm.generate, and gives the same
    tokens; without a batch the error says what to pass."""
    from steerlab.methods import actadd

    lm = tiny_model("llama")
    vec = actadd.extract(lm, "Love", "Hate", 1, coeff=4.0, chat=False)
    steering = actadd.ActAddSteering(vec)
    prompts = ["I went up to my friend and said", "The weather today is"]
    want = lm.generate(prompts, steering=steering, max_new_tokens=5, chat=False)
    batch = actadd.prepare(lm, prompts, steering, chat=False)
    with lm.steer(steering, batch=batch):
        out = lm.model.generate(**batch.model_inputs(), max_new_tokens=5, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    got = lm.tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
    assert [g.strip() for g in got] == [w.strip() for w in want]
    with pytest.raises(ValueError, match="batch="), lm.steer(steering):
        pass


def test_per_row_strengths_of_the_wrong_length_are_an_error():
    lm = tiny_model("llama")
    batch = lm.prepare(["a b c", "d e", "f", "g h"], chat=False)
    iv = add(1, torch.ones(lm.hidden_size), strength=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="2 per-row strengths but the batch has 4 prompts"), \
            lm.steer(iv, batch=batch):
        pass
    with pytest.raises(ValueError, match="per-row strengths"):
        lm.generate(["a b c", "d e", "f", "g h"], steering=iv, max_new_tokens=2, chat=False)
