"""Models dispatched by accelerate (``device_map``): here blocks 2-3 of a tiny model are offloaded
to disk, so accelerate's hooks load their weights at forward time, as they do for blocks spread over
GPUs. Capture, every intervention kind, generation and PaCE removal must give what the plain model gives."""

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

import steerlab
from steerlab import Window, add, apply_fn, capture, clamp, project_out
from steerlab.pace import PaCE, SeedPartitioner, build_dictionary

accelerate = pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    plain = tiny_model("llama")
    copy = AutoModelForCausalLM.from_config(plain.model.config, attn_implementation="eager").eval()
    copy.load_state_dict(plain.model.state_dict())
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    accelerate.dispatch_model(copy, device_map, offload_dir=str(tmp_path_factory.mktemp("offload")))
    assert any(p.device.type == "meta" for p in copy.model.layers[3].parameters())  # really offloaded
    return plain, steerlab.load_model(copy, tokenizer=tiny_tokenizer())


PROMPTS = ["I love sunny days and", "The quick brown fox jumps over"]


def test_capture_and_devices(pair):
    plain, split = pair
    assert split.device.type == "cpu" and split.block_device(3).type == "cpu"
    a = capture(plain, PROMPTS, [1, 3], positions="all")
    b = capture(split, PROMPTS, [1, 3], positions="all")
    for layer in (1, 3):
        assert torch.allclose(a[layer], b[layer], atol=1e-5)


def test_every_intervention_kind_on_offloaded_blocks(pair):
    plain, split = pair
    d = plain.hidden_size
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d, generator=g)
    kinds = [
        add(3, v, strength=2.0, window=Window.generated()),
        add(2, torch.randn(3, d, generator=g), window=Window.span(0, 3)),
        project_out(3, v),
        clamp(2, v, 1.5),
        apply_fn(3, lambda h, ctx: h.flip(-1)),
    ]
    for iv in kinds:
        base = plain.generate(PROMPTS, max_new_tokens=6, chat=False)
        want = plain.generate(PROMPTS, max_new_tokens=6, chat=False, steering=iv)
        got = split.generate(PROMPTS, max_new_tokens=6, chat=False, steering=iv)
        assert got == want, iv.kind
        assert want != base, f"{iv.kind} had no effect; the comparison would prove nothing"


def test_pace_removal_on_an_offloaded_block(pair):
    plain, split = pair
    words = ["love", "hate", "rain", "fox", "dog", "cake", "flowers", "model"]
    d_plain = build_dictionary(plain, words, [3], templates=["I like {w} a lot.", "The {w} was there."])
    d_split = build_dictionary(split, words, [3], templates=["I like {w} a lot.", "The {w} was there."])
    assert torch.allclose(d_plain.atoms[3], d_split.atoms[3], atol=1e-5)
    part = SeedPartitioner(["love", "fox"]).partition(d_plain)
    want = plain.generate(PROMPTS, max_new_tokens=6, chat=False, steering=PaCE(d_plain, part))
    got = split.generate(PROMPTS, max_new_tokens=6, chat=False, steering=PaCE(d_plain, part))
    assert got == want
