"""``steerlab cache``: what the user cache holds, which entries are stale, and removing them."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest

from steerlab.cache import entries, human_size, remove
from steerlab.cli import main
from steerlab.errors import InputError

CURRENT = ".".join(version("transformers").split(".")[:2])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache with a current and an outdated model conversion, a GGUF file, a stimuli folder with its
    manifest and one without, a label file and an atomic write in progress."""
    root = tmp_path / "cache"
    for name in (f"smollm2-135m-transformers{CURRENT}", "smollm2-135m-transformers0.1"):
        (root / "models" / name).mkdir(parents=True)
        (root / "models" / name / "model.safetensors").write_bytes(b"x" * 1500)
    (root / "gguf").mkdir()
    (root / "gguf" / "m.gguf").write_bytes(b"g" * 10)
    stim = root / "pace-stimuli" / "0123456789abcdef"
    stim.mkdir(parents=True)
    (stim / "manifest.json").write_text(json.dumps({"writer": "qwen2.5-coder-0.5b", "n_concepts": 3,
                                                    "concepts_head": ["dog", "cat", "rain"], "per_concept": 8,
                                                    "n_shards": 2}))
    (stim / "shard-0-abc.json").write_text("{}")
    (root / "pace-stimuli" / "fedcba9876543210").mkdir()
    (root / "pace-partitions").mkdir()
    (root / "pace-partitions" / "ab-llm-cd.pt").write_bytes(b"p")
    (root / "pace-partitions" / ".ab-cd.tsv.123.xyz.tmp").write_bytes(b"half-written")
    monkeypatch.setenv("STEERLAB_CACHE", str(root))
    return root


def test_entries_describe_the_cache_and_mark_outdated_conversions(cache):
    found = {e.key: e for e in entries()}
    assert sorted(found) == sorted([f"models/smollm2-135m-transformers{CURRENT}", "models/smollm2-135m-transformers0.1",
                                    "gguf/m.gguf", "pace-stimuli/0123456789abcdef", "pace-stimuli/fedcba9876543210",
                                    "pace-partitions/ab-llm-cd.pt"])  # not the write in progress
    assert [k for k, e in found.items() if e.stale] == ["models/smollm2-135m-transformers0.1"]
    assert f"this install has {CURRENT}" in found["models/smollm2-135m-transformers0.1"].note
    assert found["models/smollm2-135m-transformers0.1"].size == 1500
    stim = found["pace-stimuli/0123456789abcdef"].note
    assert "qwen2.5-coder-0.5b" in stim and "3 concepts (dog, cat, rain" in stim and "1 of 2 shards" in stim
    assert "before folders had a manifest" in found["pace-stimuli/fedcba9876543210"].note
    assert "language-model partitioner" in found["pace-partitions/ab-llm-cd.pt"].note
    assert [human_size(n) for n in (999, 1500, 2_500_000, 7.1e9)] == ["999 B", "1.5 KB", "2.5 MB", "7.1 GB"]


def test_remove_checks_every_name_first_then_removes(cache):
    with pytest.raises(InputError, match="Not in the cache: models/../gguf"):
        remove(["gguf/m.gguf", "models/../gguf"])
    assert (cache / "gguf" / "m.gguf").exists()  # nothing removed when one name is wrong
    gone = remove(["gguf/m.gguf"], stale=True)
    assert [e.key for e in gone] == ["gguf/m.gguf", "models/smollm2-135m-transformers0.1"]
    assert not (cache / "gguf" / "m.gguf").exists()
    assert not (cache / "models" / "smollm2-135m-transformers0.1").exists()
    assert (cache / "models" / f"smollm2-135m-transformers{CURRENT}" / "model.safetensors").exists()


def test_cache_cli_lists_and_removes(cache, capsys):
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "6 entries" in out and "[stale]" in out and "steerlab cache remove --stale" in out
    assert main(["cache", "list", "--stale"]) == 0
    out = capsys.readouterr().out
    assert "1 stale entry, 1.5 KB" in out and "models/smollm2-135m-transformers0.1" in out and "gguf" not in out
    assert main(["cache", "remove"]) == 2
    assert "Name the entries to remove" in capsys.readouterr().err
    assert main(["cache", "list", "gguf/m.gguf"]) == 2
    assert main(["cache", "remove", "--stale"]) == 0
    out = capsys.readouterr().out
    assert "removed models/smollm2-135m-transformers0.1 (1.5 KB)" in out and "freed 1.5 KB" in out
    assert main(["cache", "remove", "--stale"]) == 0  # nothing stale left: nothing to do, no error
    assert "freed 0 B" in capsys.readouterr().out
