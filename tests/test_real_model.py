"""Integration tests on the embedded real model, SmolLM2-135M-Instruct."""

import re

import pytest
import torch

import steerlab
from steerlab import Window, add, capture

pytestmark = pytest.mark.slow


def test_load_facts(smol):
    assert smol.name == "smollm2-135m"
    assert (smol.num_layers, smol.hidden_size, smol.blocks_path) == (30, 576, "model.layers")
    assert smol.has_chat_template


def test_chat_generation_is_coherent_english(smol):
    out = smol.generate(["What is the capital of France? Answer in one sentence."], max_new_tokens=24)[0]
    assert "Paris" in out
    words = re.findall(r"[A-Za-z']+", out)
    assert len(words) >= 4


def test_steering_changes_next_token_distribution(smol):
    batch = smol.prepare(["Tell me about your day."], chat=True)
    pos = capture(smol, ["I love this, it is wonderful and happy."], 10, chat=True)[10]
    neg = capture(smol, ["I hate this, it is terrible and sad."], 10, chat=True)[10]
    with torch.no_grad():
        plain = smol.model(**batch.model_inputs()).logits[0, -1].log_softmax(-1)
        with smol.steer(add(10, (pos - neg)[0], strength=4.0, window=Window.assistant()), batch=batch):
            steered = smol.model(**batch.model_inputs()).logits[0, -1].log_softmax(-1)
        with smol.steer(add(10, (pos - neg)[0], strength=0.0, window=Window.assistant()), batch=batch):
            zero = smol.model(**batch.model_inputs()).logits[0, -1].log_softmax(-1)
    kl = torch.sum(plain.exp() * (plain - steered))
    assert kl > 0.05
    assert torch.equal(plain, zero)


def test_real_model_cached_equals_uncached(smol):
    batch = smol.prepare(["Name a colour.", "Say hello to me in French please."], chat=True)
    direction = torch.randn(576, generator=torch.Generator().manual_seed(0))
    iv = add(12, direction, strength=3.0, window=Window.assistant())
    with smol.steer(iv, batch=batch):
        res = smol.model.generate(**batch.model_inputs(), max_new_tokens=4, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, pad_token_id=smol.tokenizer.pad_token_id,
                                  eos_token_id=None, temperature=None, top_p=None, top_k=None)
        width = batch.input_ids.shape[1]
        ids = res.sequences[:, :-1]
        mask = torch.cat([batch.attention_mask, torch.ones(2, ids.shape[1] - width, dtype=torch.long)], 1)
        with torch.no_grad():
            full = smol.model(**smol.forward_inputs(ids, mask)).logits[:, width - 1:]
    torch.testing.assert_close(torch.stack(res.logits, 1), full, atol=2e-3, rtol=2e-3)


def test_missing_model_error_names_what_to_do():
    with pytest.raises(steerlab.ModelNotFoundError, match="Offline"):
        steerlab.load_model("no-such-org/no-such-model-xyz", local_files_only=True)
    with pytest.raises(steerlab.ModelNotFoundError, match="does not exist"):
        steerlab.load_model("/nonexistent/model.gguf")
    with pytest.raises(steerlab.ModelNotFoundError, match="No model directory"):
        steerlab.load_model("./not/a/model/dir")
