"""The vLLM plugin's host-side parts that need no vLLM: engine options, and how ActAdd pairs
become table operations (the engine itself is tested in tests/test_vllm.py)."""

from __future__ import annotations

import pytest
import torch

from steerlab.errors import InputError
from steerlab.spec import SpecError, SteeringSpec
from steerlab.vllm import engine_config
from steerlab.vllm.program import PAIR_ROW, Compiler, ModelFacts, Op, Pair, PluginConfig

FACTS = ModelFacts("tiny", 8, 4)


def test_engine_options_for_pairs_are_checked():
    config = PluginConfig.from_additional(engine_config(actadd_layers=[2, 1, 2]))
    assert config is not None and config.vectors is None and config.actadd_layers == (1, 2)
    for bad in ({"actadd_layers": "2"}, {"actadd_layers": [-1]}, {"actadd_layers": [True]},
                {"actadd_layers": [1], "actadd_max_tokens": 0}, {"max_ops": 2}):
        with pytest.raises(InputError, match="steerlab"):
            PluginConfig.from_additional({"steerlab": bad})
    with pytest.raises(InputError, match="do not exist"):
        Compiler(FACTS, {}, actadd_layers=(4,))


def test_pair_drops_only_its_leading_zero_rows():
    t = torch.zeros(5, 8)
    t[2, 0], t[4, 1] = 1.0, -2.0
    pair = Pair.of(t)
    assert pair.start == 2 and torch.equal(pair.rows, t[2:])
    back = Pair.from_extra(pair.to_extra())
    assert back.start == 2 and torch.equal(back.rows, pair.rows)


def test_pair_compiles_to_an_op_on_the_requests_own_rows():
    compiler = Compiler(FACTS, {}, actadd_layers=(2,), actadd_max_tokens=3)
    spec = SteeringSpec.from_dict({"actadd": {"positive": "a", "negative": "b", "layer": 2}})
    pair = Pair(4, torch.randn(2, 8))
    assert compiler.compile(spec, 10, pair=pair) == {(2, "input"): [Op(PAIR_ROW, 1.0, 0.0, 1.0, 4, 6, 1)]}
    for bad, fragment in [(Pair(0, torch.randn(4, 8)), "actadd_max_tokens"),
                          (Pair(0, torch.full((1, 8), float("nan"))), "finite"),
                          (Pair(0, torch.randn(1, 7)), "actadd_max_tokens"), (None, "actadd_max_tokens")]:
        with pytest.raises(SpecError, match=fragment):
            compiler.compile(spec, 10, pair=bad)
    other = SteeringSpec.from_dict({"actadd": {"positive": "a", "negative": "b", "layer": 1}})
    with pytest.raises(SpecError, match=r"at blocks \[2\]"):
        compiler.check(other)
    with pytest.raises(SpecError, match="only when started"):
        Compiler(FACTS, {}).check(spec)
