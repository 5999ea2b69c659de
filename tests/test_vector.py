"""SteeringVector: arithmetic, exact safetensors round trip, refusal of bad files, GGUF round trip."""

import pytest
import torch
from tiny import tiny_model

from steerlab import SteeringVector, VectorFileError
from steerlab.gguf_io import export_control_vector, load_control_vector


def _vec(d=32, layers=(1, 2), **kw):
    g = torch.Generator().manual_seed(0)
    return SteeringVector({k: torch.randn(d, generator=g) for k in layers}, model_name="tiny", hidden_size=d,
                          method="caa", meta={"dataset_sha256": "abc", "n_pairs": 3}, **kw)


def test_arithmetic_and_norms():
    a, b = _vec(), _vec() * 2
    assert torch.allclose((a + b).layers[1], 3 * a.layers[1])
    assert torch.allclose((b - a).layers[2], a.layers[2])
    assert torch.allclose((-a).layers[1], -a.layers[1])
    assert torch.allclose((a / 4).layers[1], a.layers[1] / 4)
    assert all(abs(n - 5.0) < 1e-5 for n in a.normalised(5.0).norms().values())
    with pytest.raises(ValueError):
        a + _vec(d=16)


def test_save_load_round_trip_is_exact(tmp_path):
    a = _vec()
    path = a.save(tmp_path / "v.safetensors")
    b = SteeringVector.load(path)
    assert b.layers.keys() == a.layers.keys()
    assert all(torch.equal(a.layers[k], b.layers[k]) for k in a.layers)
    assert (b.model_name, b.hidden_size, b.method, b.site, b.apply, b.meta) == (
        a.model_name, a.hidden_size, a.method, a.site, a.apply, a.meta)
    per_pos = SteeringVector({3: torch.randn(4, 32)}, "tiny", 32, method="actadd", site="input", apply="front")
    c = SteeringVector.load(per_pos.save(tmp_path / "p.safetensors"))
    assert torch.equal(c.layers[3], per_pos.layers[3]) and c.apply == "front" and c.site == "input"


def test_wrong_model_is_refused(tmp_path):
    lm = tiny_model("llama")
    path = _vec(d=16).save(tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError, match="hidden size 16"):
        SteeringVector.load(path, model=lm)
    other = SteeringVector({1: torch.ones(32)}, model_name="another-model", hidden_size=32)
    other = other.save(tmp_path / "o.safetensors")
    with pytest.raises(VectorFileError, match="made for 'another-model'"):
        SteeringVector.load(other, model=lm)
    assert SteeringVector.load(other, model=lm, allow_other_model=True).hidden_size == 32


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    path = _vec().save(tmp_path / "v.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(VectorFileError, match="corrupt or truncated"):
        SteeringVector.load(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(VectorFileError):
        SteeringVector.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(VectorFileError, match="not a steerlab vector"):
        SteeringVector.load(tmp_path / "plain.safetensors")
    with pytest.raises(VectorFileError, match="No vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = _vec().save(tmp_path / "v.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        (_vec() * 3).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


def test_gguf_round_trip_and_layer_numbering(tmp_path):
    import gguf

    a = _vec(layers=(1, 5))
    path = export_control_vector(a, tmp_path / "v.gguf", model_hint="llama")
    reader = gguf.GGUFReader(str(path))
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.5"]
    b = load_control_vector(path)
    assert b.site == "output" and b.apply == "all" and b.meta["model_hint"] == "llama"
    assert all(torch.equal(a.layers[k], b.layers[k]) for k in a.layers)
    assert torch.equal(SteeringVector.load(path).layers[5], a.layers[5])
    # An input-site vector at block L is llama.cpp's direction.(L-1).
    inp = SteeringVector({3: torch.ones(32)}, "tiny", 32, site="input")
    reader = gguf.GGUFReader(str(export_control_vector(inp, tmp_path / "i.gguf")))
    assert [t.name for t in reader.tensors] == ["direction.2"]


def test_gguf_export_refuses_what_llama_cpp_cannot_hold(tmp_path):
    with pytest.raises(VectorFileError, match="block 0"):
        export_control_vector(_vec(layers=(0, 1)), tmp_path / "a.gguf")
    per_pos = SteeringVector({3: torch.randn(4, 32)}, "tiny", 32, apply="front")
    with pytest.raises(VectorFileError, match="per position"):
        export_control_vector(per_pos, tmp_path / "b.gguf")
    assert not list(tmp_path.iterdir())
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(VectorFileError):
        load_control_vector(tmp_path / "bad.gguf")


def test_vector_applies_as_interventions():
    lm = tiny_model("llama")
    v = _vec()
    batch = lm.prepare(["I love sunny days"], chat=True)
    plain = lm.model(**batch.model_inputs()).logits
    with lm.steer(v * 3.0, batch=batch):
        steered = lm.model(**batch.model_inputs()).logits
    with lm.steer(v.interventions(multiplier=3.0), batch=batch):
        same = lm.model(**batch.model_inputs()).logits
    assert not torch.allclose(plain, steered)
    assert torch.equal(steered, same)


def test_non_finite_vectors_and_non_object_headers_are_refused(tmp_path):
    import json as _json

    from safetensors.torch import save_file

    from steerlab.vector import FORMAT, SteeringVector, VectorFileError

    bad = SteeringVector({1: torch.tensor([1.0, float("nan"), 0.0, 0.0])}, "m", 4)
    bad.save(tmp_path / "nan.safetensors")
    with pytest.raises(VectorFileError, match="NaN or infinite"):
        SteeringVector.load(tmp_path / "nan.safetensors")
    header = {"format": FORMAT, "layers": [1], "model_name": "m", "hidden_size": 4, "meta": [1, 2]}
    save_file({"layer.1": torch.zeros(4)}, str(tmp_path / "list-meta.safetensors"),
              metadata={"steerlab": _json.dumps(header)})
    with pytest.raises(VectorFileError, match="JSON objects"):
        SteeringVector.load(tmp_path / "list-meta.safetensors")
    header.update(meta={}, hidden_size=1e999)
    save_file({"layer.1": torch.zeros(4)}, str(tmp_path / "huge.safetensors"),
              metadata={"steerlab": _json.dumps(header)})
    with pytest.raises(VectorFileError, match="damaged"):
        SteeringVector.load(tmp_path / "huge.safetensors")


def test_saving_keeps_the_file_mode_and_refuses_bad_sites_and_layers(tmp_path):
    import os
    import stat

    from steerlab.vector import SteeringVector

    vec = SteeringVector({1: torch.ones(4)}, "m", 4)
    path = tmp_path / "v.safetensors"
    vec.save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    os.chmod(path, 0o640)
    vec.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    with pytest.raises(ValueError, match="site"):
        SteeringVector({1: torch.ones(4)}, "m", 4, site="bogus")
    with pytest.raises(ValueError, match="from 0"):
        SteeringVector({-1: torch.ones(4)}, "m", 4)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(VectorFileError, match="not a regular file"):
        SteeringVector.load(fifo)


def test_a_killed_save_leaves_no_temporary_behind_after_the_next_save(tmp_path):
    import os
    import subprocess
    import sys

    from steerlab.vector import SteeringVector

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    path = tmp_path / "v.safetensors"
    stale = tmp_path / f".v.safetensors.{pid}.abc123.tmp"  # what a kill -9 during a save leaves
    live = tmp_path / f".v.safetensors.{os.getpid()}.def456.tmp"  # a save under way in this process
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    SteeringVector({1: torch.ones(4)}, "m", 4).save(path)
    assert not stale.exists() and live.exists() and SteeringVector.load(path).layers[1].sum() == 4


def test_a_gguf_direction_that_is_a_matrix_is_refused(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_tensor("direction.1", np.ones((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorFileError, match="one vector"):
        load_control_vector(path)
