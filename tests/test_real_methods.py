"""ActAdd, CAA and the CLI on the embedded real model."""

import json

import pytest
import torch

from steerlab import cli, datasets
from steerlab.methods import actadd, caa

pytestmark = pytest.mark.slow


def test_caa_matches_steering_vectors_package(smol, shared_data):
    sv = pytest.importorskip("steering_vectors")
    pairs = datasets.load(shared_data / "caa" / "sycophancy_generate.json")[:24]
    ours = caa.extract(smol, pairs, [8, 14], counterbalance=False, progress=False)
    samples = [(smol.render(p.prompt, assistant_prefix=p.positive).text,
                smol.render(p.prompt, assistant_prefix=p.negative).text) for p in pairs]
    # SmolLM2 splits "(A)" into "(", "A", ")": the letter is the second-to-last token.
    assert smol.tokenizer.tokenize(samples[0][0])[-2] == "A" or "A" in smol.tokenizer.tokenize(samples[0][0])[-2]
    ref = sv.train_steering_vector(smol.model, smol.tokenizer, samples, layers=[8, 14], read_token_index=-2,
                                   show_progress=False, batch_size=4)
    for layer in (8, 14):
        cos = torch.nn.functional.cosine_similarity(ours.layers[layer], ref.layer_activations[layer].float(), dim=0)
        assert cos > 0.999, (layer, float(cos))


def test_actadd_love_hate_shifts_love_over_hate(smol):
    """Love - Hate at block 6, c=5 (chat-rendered) raises logit(' love') - logit(' hate') on every prompt."""
    tok = smol.tokenizer
    love, hate = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" love", " hate"))
    vec = actadd.extract(smol, "Love", "Hate", 6, coeff=5.0, chat=True)
    steering = actadd.ActAddSteering(vec)
    prompts = ["I went up to my friend and said that I", "Tell me what you feel about your neighbour. I",
               "My opinion of this city is that I really"]
    batch = actadd.prepare(smol, prompts, steering, chat=True)
    with torch.no_grad():
        plain = smol.model(**batch.model_inputs()).logits[:, -1].log_softmax(-1)
        with smol.steer(steering.for_batch(batch), batch=batch):
            steered = smol.model(**batch.model_inputs()).logits[:, -1].log_softmax(-1)
    shift = (steered[:, love] - steered[:, hate]) - (plain[:, love] - plain[:, hate])
    assert (shift > 0.5).all(), shift.tolist()


def test_cli_extract_info_generate_export(smol, tmp_path, capsys):
    out = tmp_path / "syco.safetensors"
    assert cli.main(["extract", "--data", "sycophancy", "--layers", "10,12", "--limit", "8", "-o", str(out)]) == 0
    assert cli.main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["layers"] == [10, 12] and info["hidden_size"] == 576 and info["meta"]["n_pairs"] == 8
    assert cli.main(["generate", "Say something kind.", "-v", f"{out}:8", "--max-new-tokens", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["unsteered"] and rows[0]["steered"] and rows[0]["unsteered"] != rows[0]["steered"]
    assert cli.main(["generate", "I went up to my friend and said", "--raw", "--actadd", "Love", "Hate",
                     "--max-new-tokens", "8"]) == 0
    assert "+++ steered" in capsys.readouterr().out
    gg = tmp_path / "syco.gguf"
    assert cli.main(["export", str(out), "-o", str(gg)]) == 0
    assert gg.exists()
    aa = tmp_path / "aa.safetensors"
    assert cli.main(["extract", "--method", "actadd", "--positive", "Love", "--negative", "Hate", "--layers", "6",
                     "--coeff", "5", "-o", str(aa)]) == 0
    assert cli.main(["export", str(aa), "-o", str(tmp_path / "aa.gguf")]) == 2  # per-position: refused clearly
    assert "per position" in capsys.readouterr().err
    assert cli.main(["info", str(tmp_path / "missing.safetensors")]) == 2


def test_cli_sweep(smol, tmp_path, capsys):
    assert cli.main(["sweep", "--data", "sentiment", "--open-answers", "--layers", "6,10", "--multipliers=-2,2",
                     "--limit", "6", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recommended layer" in out and "| 6 |" in out and "| 10 |" in out
    assert (tmp_path / "sweep-sentiment.png").exists() and (tmp_path / "sweep-sentiment.json").exists()


def test_cli_reliability(smol, tmp_path, capsys):
    assert cli.main(["reliability", "--data", "sentiment", "--open-answers", "--layer", "8", "--scale", "2",
                     "--limit", "6", "--generalisation", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "anti-steerable" in out and "relative OOD steerability" in out
    assert (tmp_path / "reliability-sentiment.json").exists() and (tmp_path / "generalisation-sentiment.png").exists()


def test_demo_quick(tmp_path):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "ActAdd Love-Hate" in report and "CAA x+4" in report
    assert (tmp_path / "demo" / "sentiment.png").stat().st_size > 5000
