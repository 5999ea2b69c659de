"""Control vectors written in llama.cpp's layout by another tool (repeng's export_gguf) are read
with the same layer numbering and applied identically."""

import numpy
import pytest
import torch
from tiny import tiny_model

from steerlab import SteeringVector, Window
from steerlab.gguf_io import export_control_vector


@pytest.fixture(scope="module")
def repeng():
    numpy.float_ = numpy.float64  # repeng 0.4 still uses the NumPy 1 alias
    return pytest.importorskip("repeng")


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_repeng_gguf_applies_like_repeng(repeng, family, tmp_path):
    lm = tiny_model(family)
    g = torch.Generator().manual_seed(3)
    directions = {1: torch.randn(32, generator=g).numpy() * 3, 2: torch.randn(32, generator=g).numpy() * 3}
    cv = repeng.ControlVector(lm.model.config.model_type, directions)
    path = tmp_path / "repeng.gguf"
    cv.export_gguf(str(path))
    ours = SteeringVector.load(path, model=lm)
    assert ours.site == "output" and ours.apply == "all" and sorted(ours.layers) == [1, 2]
    ids = torch.tensor([lm.tokenizer("I love sunny days and I hate the rain.")["input_ids"]])
    with torch.no_grad():
        plain = lm.model(ids).logits
        with lm.steer(ours * 1.5):
            steered = lm.model(ids).logits
        control = repeng.ControlModel(lm.model, [1, 2])
        try:
            control.set_control(cv, 1.5)
            theirs = control(ids).logits
        finally:
            control.unwrap()
    assert (steered - plain).abs().max() > 1e-3
    torch.testing.assert_close(steered, theirs, atol=1e-5, rtol=1e-5)
    # And our own export reads back into the same file layout.
    again = SteeringVector.load(export_control_vector(ours, tmp_path / "ours.gguf"), model=lm)
    assert all(torch.equal(again.layers[k], ours.layers[k]) for k in ours.layers)
    assert Window.all() == ours.window()
