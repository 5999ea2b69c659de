"""The one steering protocol (steerlab.steering) and the declarative specs built on it (steerlab.spec)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

import steerlab
from steerlab import Scaled, SteeringVector, Window, add, as_steering, clamp, project_out
from steerlab.methods import actadd
from steerlab.spec import SpecError, SteeringFactory, SteeringSpec
from steerlab.steering import Combined, Fixed

PROMPTS = ["I went up to my friend and said", "The weather today is", "Tell me about your weekend."]


def _vector(lm, seed: int = 0, layers=(1, 2)) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector({k: torch.randn(lm.hidden_size, generator=gen) for k in layers}, lm.name, lm.hidden_size,
                          "caa-mean", "output", "assistant")


def _last_logits(lm, steering, prompts=PROMPTS):
    batch = lm.prepare(prompts, padding_side="left")
    batch = as_steering(steering).transform_batch(lm, batch)
    with lm.steer(steering, batch=batch):
        return lm.model(**lm.forward_inputs(batch.input_ids, batch.attention_mask)).logits[:, -1].float()


def test_as_steering_normalises_everything_steerable():
    lm = tiny_model("llama")
    vec = _vector(lm)
    iv = add(1, torch.ones(lm.hidden_size))
    combined = as_steering([vec, [iv, iv], None, Scaled(vec, 2.0)])
    assert isinstance(combined, Combined) and len(combined.parts) == 3
    assert isinstance(combined.parts[0], Scaled) and isinstance(combined.parts[1], Fixed)
    assert len(combined.parts[1].interventions) == 2
    assert len(combined.for_batch(None)) == 2 + 2 + 2
    assert not as_steering(None) and not as_steering([])
    with pytest.raises(TypeError, match="Cannot steer with str"):
        as_steering(["not steering"])


def test_steer_and_generate_take_the_same_objects():
    """A vector, a Scaled vector, raw interventions and ActAdd give the same result in lm.steer as the
    equivalent hand-built interventions, and lm.generate takes each of them."""
    lm = tiny_model("qwen2")
    vec = _vector(lm)
    by_hand = _last_logits(lm, vec.interventions(3.0))
    for form in (Scaled(vec, 3.0), [Scaled(vec, 1.0), Scaled(vec, 2.0)], vec * 3.0):
        assert torch.allclose(_last_logits(lm, form), by_hand, atol=1e-5)
    assert not torch.allclose(_last_logits(lm, None), by_hand, atol=1e-3)
    love = actadd.extract(lm, "Love", "Hate", 1, coeff=4.0, chat=True)
    for form in (Scaled(vec, 3.0), vec, actadd.ActAddSteering(love, mode="pad"), [vec, actadd.ActAddSteering(love)]):
        assert len(lm.generate(PROMPTS[:2], steering=form, max_new_tokens=3)) == 2


def test_a_spec_round_trips_from_a_vector_file(tmp_path):
    """File -> FILE:MULT spec -> steering gives exactly what building it by hand gives, and the JSON
    form of any spec parses back to the same spec."""
    lm = tiny_model("llama")
    vec = _vector(lm)
    path = vec.save(tmp_path / "v.safetensors")
    spec = SteeringSpec.from_cli([f"{path}:4"])
    assert spec.vectors[0].name == str(path) and spec.vectors[0].multiplier == 4.0
    steering = SteeringFactory(lm).build(spec)
    assert torch.equal(_last_logits(lm, steering), _last_logits(lm, vec.interventions(4.0)))
    assert lm.generate(PROMPTS, steering=steering, max_new_tokens=4) == \
        lm.generate(PROMPTS, steering=vec.interventions(4.0), max_new_tokens=4)

    love = actadd.extract(lm, "Love", "Hate", 1, coeff=4.0, chat=True)
    apath = love.save(tmp_path / "love.safetensors")
    built = SteeringFactory(lm, actadd_mode="pad").build(SteeringSpec.from_cli([f"{apath}:2"]))
    assert lm.generate(PROMPTS, steering=built, max_new_tokens=4) == \
        lm.generate(PROMPTS, steering=actadd.ActAddSteering(love, 2.0, "pad"), max_new_tokens=4)

    full = SteeringSpec.from_dict({
        "vectors": [{"name": "a", "multiplier": -2, "layers": [2, 1], "op": "project_out", "window": "generated"},
                    {"name": "b", "op": "clamp", "value": 1.5, "window": {"start": 0, "end": 4}}],
        "actadd": {"positive": "Love", "negative": "Hate", "layer": 1, "coeff": 3, "mode": "overlay"},
        "pace": {"task": "detox", "layers": [3], "strength": 0.5, "sign": "positive"}})
    assert SteeringSpec.from_dict(full.to_dict()) == full
    assert full.fingerprint() == SteeringSpec.from_dict(full.to_dict()).fingerprint()
    assert full.fingerprint() != SteeringSpec.from_dict({"vectors": [{"name": "a"}]}).fingerprint()


def test_every_operation_and_window_in_a_spec_matches_the_hand_built_intervention():
    lm = tiny_model("gemma2")
    vec = _vector(lm, layers=(2,))
    factory = SteeringFactory(lm, {"v": vec})
    d = vec.layers[2]
    cases = [
        ({"name": "v", "multiplier": 2, "window": "all"}, add(2, d, strength=2.0, window=Window.all())),
        ({"name": "v", "op": "project_out"}, project_out(2, d, window=Window.assistant())),
        ({"name": "v", "op": "clamp", "value": 3.0, "window": "user"}, clamp(2, d, 3.0, window=Window.onward("user"))),
        ({"name": "v", "multiplier": 5, "window": {"start": 0, "end": 3}}, add(2, d, strength=5.0,
                                                                                window=Window.span(0, 3))),
    ]
    for entry, by_hand in cases:
        built = factory.build({"vectors": [entry]})
        assert torch.allclose(_last_logits(lm, built), _last_logits(lm, by_hand), atol=1e-5), entry


def test_rows_with_different_specs_in_one_batch_each_get_their_own():
    """build_rows: every row of a shared batch gets exactly the steering its own spec asks for."""
    lm = tiny_model("llama")
    factory = SteeringFactory(lm, {"a": _vector(lm, 1), "b": _vector(lm, 2)})
    specs = [{"vectors": [{"name": "a", "multiplier": 3}]},
             None,
             {"vectors": [{"name": "a", "multiplier": -1}, {"name": "b", "op": "project_out"},
                          {"name": "a", "multiplier": 2}]}]
    together = _last_logits(lm, factory.build_rows(specs))
    for r, spec in enumerate(specs):
        alone = _last_logits(lm, factory.build(spec), [PROMPTS[r]])
        assert torch.allclose(together[r], alone[0], atol=1e-4), r
    with pytest.raises(ValueError, match="cannot share a batch"):
        factory.build_rows([{"actadd": {"positive": "a", "negative": "b", "layer": 1}}, None])


@pytest.mark.parametrize("spec, param", [
    ({"vectors": [{"name": "v", "multiplier": 2, "strength": 3}]}, "steering.vectors[0].strength"),
    ({"vector": [{"name": "v"}]}, "steering.vector"),
    ({"vectors": [{"name": "nope"}]}, "steering.vectors[0].name"),
    ({"vectors": [{"name": "v", "layers": [7]}]}, "steering.vectors[0].layers"),
    ({"vectors": [{"name": "v", "op": "multiply"}]}, "steering.vectors[0].op"),
    ({"vectors": [{"name": "v", "multiplier": "4"}]}, "steering.vectors[0].multiplier"),
    ({"vectors": [{"name": "v", "multiplier": 10**400}]}, "steering.vectors[0].multiplier"),
    ({"vectors": [{"name": "v", "window": {"start": 3, "end": 1}}]}, "steering.vectors[0].window"),
    ({"vectors": {"name": "v"}}, "steering.vectors"),
    ({"actadd": {"positive": "a", "negative": "b", "layer": 99}}, "steering.actadd.layer"),
    ({"actadd": {"positive": "a", "layer": 1}}, "steering.actadd.negative"),
    ({"pace": {"task": "detox"}}, "steering.pace"),
    ([1, 2], "steering"),
])
def test_a_spec_that_names_something_unknown_is_an_error(spec, param):
    lm = tiny_model("llama")
    factory = SteeringFactory(lm, {"v": _vector(lm)})
    with pytest.raises(SpecError) as err:
        factory.build(spec)
    assert err.value.param == param
    assert isinstance(err.value, steerlab.SteerlabError) and isinstance(err.value, ValueError)


def test_the_cli_reports_input_errors_in_one_line_and_shows_bugs(monkeypatch, capsys, tmp_path):
    from steerlab import cli
    from steerlab.cli import vectors

    assert cli.main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("error: ")

    def buggy(args):
        return {}["a library bug"]

    monkeypatch.setattr(vectors, "cmd_info", buggy)
    with pytest.raises(KeyError, match="a library bug"):
        cli.main(["info", "anything.safetensors"])
