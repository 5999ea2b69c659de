"""The concept dictionary (docs/methods.md, "PaCE", step 1): one unit-norm atom per concept per layer.

An atom is the mean activation at the concept's own tokens over its stimulus sentences, centred by
the mean over all concepts, then scaled to unit norm (read with one shared pass over each template's
words, :func:`_read_concept_tokens`). Files are safetensors (``atoms.L`` [K, d] and
``centre.L`` [d]) with the concept names and the recipe in the header; they load memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..capture import capture, capture_after_prefix
from ..errors import InputError, UnknownNameError
from ..progress import progress_bar
from ..safefile import atomic_save, mmap_tensors, read_header
from ..tokens import tokenize_with_offsets
from .concepts import TEMPLATES, stimuli
from .stimuli import LEAD_IN, concept_span

if TYPE_CHECKING:
    from ..model import SteerModel

FORMAT = "steerlab.concept_dictionary"


class DictionaryFileError(InputError):
    """A dictionary file is missing, damaged or made for another model."""


@dataclass
class ConceptDictionary:
    concepts: list[str]
    atoms: dict[int, torch.Tensor]  # layer -> [K, d], unit-norm rows
    model_name: str
    hidden_size: int
    centres: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.concepts)) != len(self.concepts):
            raise InputError("Concept names must be unique.")
        for layer, a in self.atoms.items():
            if a.shape != (len(self.concepts), self.hidden_size):
                raise InputError(f"atoms[{layer}] has shape {tuple(a.shape)}; expected "
                                 f"{(len(self.concepts), self.hidden_size)}.")
        self._index = {c: i for i, c in enumerate(self.concepts)}

    def __len__(self) -> int:
        return len(self.concepts)

    @property
    def layers(self) -> list[int]:
        return sorted(self.atoms)

    def index(self, concept: str) -> int:
        if concept not in self._index:
            raise UnknownNameError(f"{concept!r} is not in this dictionary of {len(self)} concepts.")
        return self._index[concept]

    def matrix(self, layer: int) -> torch.Tensor:
        """``D`` as docs/methods.md writes it: ``[d, K]``, one unit-norm column per concept."""
        if layer not in self.atoms:
            raise UnknownNameError(f"The dictionary has layers {self.layers}, not {layer}.")
        return self.atoms[layer].T

    def neighbours(self, concept: str, k: int = 10, layer: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` concepts whose atoms have the highest cosine with ``concept``'s."""
        a = self.atoms[layer if layer is not None else self.layers[0]]
        sims = a @ a[self.index(concept)]
        sims[self.index(concept)] = -2.0
        top = sims.topk(min(k, len(self) - 1))
        return [(self.concepts[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    @property
    def fingerprint(self) -> str:
        """Identifies the dictionary's content (used to cache partitions per dictionary and task)."""
        h = hashlib.sha256(json.dumps([self.model_name, self.layers, self.meta.get("build_id")]).encode())
        h.update("\n".join(self.concepts).encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        tensors = {f"atoms.{k}": v.float() for k, v in self.atoms.items()}
        tensors.update({f"centre.{k}": v.float() for k, v in self.centres.items()})
        header = {"format": FORMAT, "model_name": self.model_name, "hidden_size": self.hidden_size,
                  "layers": self.layers, "concepts": self.concepts, "meta": self.meta,
                  "library_version": __version__}
        return atomic_save(tensors, path, {"steerlab": json.dumps(header)})

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> ConceptDictionary:
        """Open a dictionary file memory-mapped; with ``model=`` check it was built on that model."""
        path = Path(path)
        if not path.exists():
            raise DictionaryFileError(f"No dictionary file at {path}; build one with `steerlab pace build`.")
        try:
            raw, _ = read_header(path)
            header = json.loads(raw["__metadata__"]["steerlab"])
            if header.get("format") != FORMAT:
                raise InputError("not a steerlab concept dictionary")
            tensors = mmap_tensors(path)
            atoms = {int(k): tensors[f"atoms.{k}"] for k in header["layers"]}
            centres = {int(k): tensors[f"centre.{k}"] for k in header["layers"] if f"centre.{k}" in tensors}
            out = cls(list(header["concepts"]), atoms, header["model_name"], int(header["hidden_size"]),
                      centres, header.get("meta", {}))
            for k, a in list(atoms.items()) + list(centres.items()):
                if not a.is_floating_point():
                    raise InputError(f"layer {k} holds {a.dtype} values, not floating point")
                if not bool(torch.isfinite(a).all()):
                    raise InputError(f"layer {k} holds NaN or infinite values")
        except (OSError, ValueError, KeyError, TypeError, OverflowError) as err:
            raise DictionaryFileError(f"{path} is not a readable concept dictionary ({err}). Rebuild it with "
                                      "`steerlab pace build`.") from err
        if model is not None and model.hidden_size != out.hidden_size:
            raise DictionaryFileError(f"{path} was built on {out.model_name!r} (hidden size {out.hidden_size}); "
                                      f"{model.name!r} has hidden size {model.hidden_size}.")
        return out


def _sentences(concept: str, templates: Sequence[str], written: Sequence[str] | None) -> list[tuple[str, int, int]]:
    """The concept's stimuli with its character span: model-written sentences when there are any,
    else the templates."""
    if written:
        found = [(LEAD_IN + text, span) for text in written if (span := concept_span(text, concept))]
        if found:  # spans shifted past the lead-in (see stimuli.LEAD_IN)
            return [(text, start + len(LEAD_IN), end + len(LEAD_IN)) for text, (start, end) in found]
    return stimuli(concept, templates)


def _stimulus_rows(lm: SteerModel, concepts: Sequence[str], templates: Sequence[str],
                   sentences: Sequence[Sequence[str]] | None = None):
    """Token ids and concept-token masks for every stimulus sentence of every concept."""
    ids_rows, masks, owner = [], [], []
    for k, concept in enumerate(concepts):
        for text, start, end in _sentences(concept, templates, sentences[k] if sentences else None):
            ids, offsets = tokenize_with_offsets(lm.tokenizer, text)
            if offsets is None:
                raise InputError("Building a dictionary needs a fast tokenizer (with character offsets).")
            mask = [e > start and s < end and e > s for s, e in offsets]
            if not any(mask):
                raise InputError(f"Concept {concept!r} has no tokens of its own in {text!r}.")
            ids_rows.append(ids)
            masks.append(mask)
            owner.append(k)
    return ids_rows, masks, owner


@torch.no_grad()
def concept_means(lm: SteerModel, concepts: Sequence[str], layers: Sequence[int], *,
                  templates: Sequence[str] = TEMPLATES, batch_size: int = 128,
                  sentences: Sequence[Sequence[str]] | None = None) -> dict[int, torch.Tensor]:
    """Mean activation (block outputs) at each concept's tokens over its stimuli: ``{layer: [K, d]}``.
    Each sentence counts equally, however many tokens the concept takes in it. ``sentences``: each
    concept's own (model-written) sentences; a concept with none usable gets the templates."""
    ids_rows, masks, owner = _stimulus_rows(lm, concepts, templates, sentences)
    acts = _read_concept_tokens(lm, ids_rows, masks, list(layers), batch_size)
    counts = torch.tensor([sum(m) for m in masks])
    sent = torch.repeat_interleave(torch.arange(len(masks)), counts)
    owner_t = torch.tensor(owner)
    per_concept = torch.bincount(owner_t, minlength=len(concepts)).float()[:, None]
    out = {}
    for layer, a in acts.items():
        sums = torch.zeros(len(masks), a.shape[1]).index_add_(0, sent, a.float())
        sentence_means = sums / counts[:, None]
        out[layer] = torch.zeros(len(concepts), a.shape[1]).index_add_(0, owner_t, sentence_means) / per_concept
    return out


SHARED_PREFIX_MIN = 8
"""Stimuli with the same tokens before their concept are read after one shared prefix pass when at least
this many share it (every template, for a shard of concepts); the rest run whole."""


def _read_concept_tokens(lm: SteerModel, ids_rows: list[list[int]], masks: list[list[bool]], layers: list[int],
                         batch_size: int) -> dict[int, torch.Tensor]:
    """Block outputs at the concept tokens of every stimulus, in :func:`capture`'s layout (row 0's
    selected positions first). The models are causal, so nothing after a row's last concept token can
    change what is read: rows end there. Rows whose tokens before the concept are the same (a template
    read with many words) share one pass over those tokens (:func:`capture_after_prefix`)."""
    ends = [max(p for p, on in enumerate(m) if on) + 1 for m in masks]
    ids_rows = [r[:e] for r, e in zip(ids_rows, ends, strict=True)]
    masks = [m[:e] for m, e in zip(masks, ends, strict=True)]
    starts = [m.index(True) for m in masks]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (r, a) in enumerate(zip(ids_rows, starts, strict=True)):
        groups.setdefault(tuple(r[:a]), []).append(i)
    shared = {p: g for p, g in groups.items() if p and len(g) >= SHARED_PREFIX_MIN}
    pieces: list[dict[int, torch.Tensor]] = [{} for _ in ids_rows]  # per row: {layer: [selected, d]}

    def scatter(rows: list[int], acts: dict[int, torch.Tensor]) -> None:
        for k, v in acts.items():
            for i, chunk in zip(rows, v.split([sum(masks[i]) for i in rows]), strict=True):
                pieces[i][k] = chunk

    for prefix, rows in shared.items():
        a = len(prefix)
        scatter(rows, capture_after_prefix(lm, prefix, [ids_rows[i][a:] for i in rows],
                                           [masks[i][a:] for i in rows], layers, batch_size=batch_size))
    whole = [i for i in range(len(ids_rows)) if not pieces[i]]
    if whole:
        scatter(whole, capture(lm, [ids_rows[i] for i in whole], layers, positions=[masks[i] for i in whole],
                               batch_size=batch_size, progress=False))
    return {k: torch.cat([pieces[i][k] for i in range(len(ids_rows))]) for k in layers}


@dataclass(frozen=True)
class ShardTask:
    """One shard of a dictionary build (what a worker receives)."""

    concepts: list[str]
    layers: list[int]
    templates: list[str]
    batch_size: int
    sentences: list[list[str]] | None = None  # model-written stimuli per concept, if any


def shard_means(lm: SteerModel, task: ShardTask) -> dict[int, torch.Tensor]:
    """Mean activation of each of the shard's concepts at each layer."""
    return concept_means(lm, task.concepts, task.layers, templates=task.templates, batch_size=task.batch_size,
                         sentences=task.sentences)


def build_dictionary(lm: SteerModel, concepts: Sequence[str], layers: Sequence[int] | int, *,
                     templates: Sequence[str] = TEMPLATES, sentences: Mapping[str, Sequence[str]] | None = None,
                     batch_size: int = 128, shard: int = 512,
                     progress: bool | None = None,
                     run_shards: Callable[[list[ShardTask]], list[dict[int, torch.Tensor]]] | None = None
                     ) -> ConceptDictionary:
    """Build atoms for ``concepts`` at ``layers`` of ``lm`` (see the module docstring for the recipe).

    ``sentences``: model-written stimuli per concept (:func:`steerlab.pace.stimuli.model_stimuli`);
    concepts without usable ones fall back to ``templates``. Concepts are processed in shards of
    ``shard``; ``run_shards`` (default: one after another, here)
    computes :func:`shard_means` for a list of shards, e.g. on Ray workers with resumable results
    (:func:`steerlab.distributed.build_dictionary_tasks`)."""
    layer_list: list[int] = lm.check_layers(layers)
    concepts = list(dict.fromkeys(c.strip() for c in concepts if c.strip()))
    if len(concepts) < 2:
        raise InputError("A concept dictionary needs at least two distinct concepts.")
    t0 = time.time()
    shards = [ShardTask(concepts[s: s + shard], layer_list, list(templates), batch_size,
                        [list(sentences.get(c, ())) for c in concepts[s: s + shard]] if sentences else None)
              for s in range(0, len(concepts), shard)]
    if run_shards is None:
        parts = [shard_means(lm, task) for task in progress_bar(shards, "concepts", progress=progress, unit="shard")]
    else:
        parts = run_shards(shards)
    atoms, centres = {}, {}
    for layer in layer_list:
        m = torch.cat([part[layer] for part in parts])
        centres[layer] = m.mean(0)
        a = m - centres[layer]
        atoms[layer] = a / a.norm(dim=1, keepdim=True).clamp(min=1e-8)
    written = sum(1 for c in concepts if sentences and any(concept_span(t, c) for t in sentences.get(c, ())))
    meta = {"templates": list(templates), "recipe": "mean at concept tokens, centred, unit norm",
            "stimuli": "model-written" if written else "templates", "concepts_with_written_stimuli": written,
            "lead_in": LEAD_IN if written else "",
            "site": "output", "build_seconds": round(time.time() - t0, 1),
            "build_id": hashlib.sha256(f"{time.time_ns()}".encode()).hexdigest()[:12]}
    return ConceptDictionary(concepts, atoms, lm.name, lm.hidden_size, centres, meta)
