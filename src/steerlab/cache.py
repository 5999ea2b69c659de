"""What steerlab keeps in its user cache (:func:`steerlab.sources.cache_dir`), and removing it.

The cache grows with use and nothing in it expires by itself: each built-in model is converted once per
transformers major.minor version (a copy written by one version has been seen to load wrong in
another, so an upgrade leaves the old copy behind, 0.5-7 GB each), GGUF files are assembled from their
slices, concept labels and model-written stimuli are kept per input. :func:`entries` lists each entry
with its size and what it is; an entry is *stale* when steerlab can no longer read it (a model
converted for another transformers version). ``steerlab cache`` is the command line for both.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .sources import cache_dir, transformers_minor

KINDS = ("models", "gguf", "pace-partitions", "pace-stimuli", "lm-eval-tasks")
# The folder names sources.dequantised_cache_path gives converted models.
_CONVERTED = re.compile(r"^(?P<model>.+)-transformers(?P<version>\d+\.\d+)$")


@dataclass(frozen=True)
class CacheEntry:
    """One file or folder directly under a kind's folder of the cache."""

    kind: str
    name: str
    path: Path
    size: int  # bytes, all files under it
    modified: float  # the newest file's modification time (seconds since the epoch)
    note: str  # what it is
    stale: bool  # steerlab would not read it again (safe to remove)

    @property
    def key(self) -> str:
        """How ``steerlab cache remove`` names it: ``kind/name``."""
        return f"{self.kind}/{self.name}"


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]


def _describe(kind: str, path: Path, current: str) -> tuple[str, bool]:
    """The note and staleness of one entry."""
    if kind == "models":
        m = _CONVERTED.match(path.name)
        if m is None:
            return "not a converted model (unknown name)", False
        if m["version"] != current:
            return f"{m['model']} converted for transformers {m['version']}; this install has {current}", True
        return f"{m['model']} converted for transformers {m['version']}", False
    if kind == "pace-stimuli":
        return _describe_stimuli(path), False
    if kind == "pace-partitions":
        return ("concept labels by the language-model partitioner" if "-llm-" in path.name
                else "concept labels by the embedding partitioner"), False
    if kind == "gguf":
        return "GGUF file assembled from its package slices", False
    return "lm-evaluation-harness task file (written again when used)", False


def _describe_stimuli(folder: Path) -> str:
    shards = len(list(folder.glob("shard-*.json")))
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return f"model-written stimuli, {shards} shards (kept before folders had a manifest)"
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
        head = ", ".join(m["concepts_head"])
        return (f"stimuli by {m['writer']}: {m['n_concepts']} concepts ({head}, ...), {m['per_concept']} "
                f"per concept, {shards} of {m['n_shards']} shards written")
    except (ValueError, KeyError, TypeError):
        return f"model-written stimuli, {shards} shards (unreadable manifest)"


def entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry of the cache at ``root`` (default: :func:`~steerlab.sources.cache_dir`), by kind and name."""
    root = cache_dir() if root is None else root
    current = transformers_minor()
    out = []
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):  # an atomic write in progress (steerlab.safefile)
                continue
            stats = [p.stat() for p in _files(path)]
            note, stale = _describe(kind, path, current)
            out.append(CacheEntry(kind, path.name, path, sum(s.st_size for s in stats),
                                  max((s.st_mtime for s in stats), default=path.stat().st_mtime), note, stale))
    return out


def remove(keys: Sequence[str] = (), *, stale: bool = False, root: Path | None = None) -> list[CacheEntry]:
    """Remove the entries named ``kind/name`` in ``keys`` (as :func:`entries` lists them) and, with
    ``stale``, every stale one; returns what was removed. Every name is checked before anything is
    removed: one that is not an entry of the cache removes nothing and says which."""
    listed = {e.key: e for e in entries(root)}
    unknown = [k for k in keys if k not in listed]
    if unknown:
        raise InputError(f"Not in the cache: {', '.join(unknown)}. `steerlab cache` lists its entries as kind/name.")
    chosen = [listed[k] for k in dict.fromkeys(keys)]
    if stale:
        chosen += [e for e in listed.values() if e.stale and e.key not in keys]
    for e in chosen:
        if e.path.is_dir():
            shutil.rmtree(e.path)
        else:
            e.path.unlink()
    return chosen


def human_size(n: int) -> str:
    """``n`` bytes in B, KB, MB or GB (powers of 1000, as ``du --si`` and file managers show them)."""
    if n < 1000:
        return f"{n} B"
    value, unit = next((n / 1000**p, u) for p, u in ((3, "GB"), (2, "MB"), (1, "KB")) if n >= 1000**p)
    return f"{value:.1f} {unit}"


def age(modified: float, now: float | None = None) -> str:
    """How long ago ``modified`` was, in whole days ("today" under one)."""
    days = ((time.time() if now is None else now) - modified) / 86400
    return "today" if days < 1 else f"{days:.0f} days"
