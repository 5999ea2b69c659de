"""Model-written concept stimuli (docs/methods.md, "PaCE", step 1, as the paper builds PaCE-1M): a local
instruct model writes, for each concept, several sentences that use the word in context.

Concepts go to the writer in shards; each shard's replies are sampled (temperature 0.8, top-p 0.95,
frequency penalty 0.3, a fixed seed: greedy decoding makes a small writer repeat one sentence) and
kept on disk as written as soon as the shard is done, under a folder named for the writer, the
concept list, the prompt and the settings; the sentences are parsed out of them when they are read.
An interrupted run picks up at the first unfinished shard; shards can run on Ray workers like a
dictionary build. The template recipe (:data:`steerlab.pace.TEMPLATES`) stays the fast option.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..progress import progress_bar
from ..safefile import atomic_write
from ..sources import cache_dir

if TYPE_CHECKING:
    from ..model import SteerModel

PROMPT = ('Write {n} short sentences, each about a different situation, and each containing the word '
          '"{concept}". Number them 1 to {n}, one per line.')

# Read before every written sentence. A third of a small writer's sentences open with the concept,
# and a sequence's first tokens carry mostly position (they have no context to attend to): on
# SmolLM2, atoms read there put unrelated words together (neighbour purity 0.40 vs 0.70 with this
# lead-in, benchmarks/pace_stimuli.py). The lead-in is the same for every concept, so centring
# removes what it adds.
LEAD_IN = "Here is one more example. "

_NUMBERING = re.compile(r"^\s*(?:[-*\u2022]|\(?\d+[.):]|[a-z][.)])\s*")
_EMPHASIS = re.compile(r"\*+|_{2,}")  # markdown bold/italic markers (the text between them stays)
_LABEL = re.compile(r"^(?:[^\s:]+\s+){0,3}[^\s:]+:\s+(?=\S)")  # "Person B: ...", "Scenario 3: ..."
MIN_WORDS = 4  # shorter lines are headings ("Education in History"), not sentences


@dataclass(frozen=True)
class StimuliShard:
    """One shard of stimulus writing (what a worker receives)."""

    concepts: list[str]
    per_concept: int
    max_new_tokens: int
    batch_size: int
    prompt: str
    seed: int = 0


def concept_span(sentence: str, concept: str) -> tuple[int, int] | None:
    """Character span of the first whole-word, case-insensitive occurrence of ``concept``."""
    m = re.search(rf"(?<![\w]){re.escape(concept)}(?![\w])", sentence, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else None


def parse_sentences(text: str, concept: str, limit: int) -> list[str]:
    """The usable sentences of one reply: one per line, with list markers, markdown emphasis and a
    short leading label ("Person B:") taken off; a line that ends in ':' is the writer's preamble or a
    heading and is dropped, as is one of fewer than :data:`MIN_WORDS` words. Each kept sentence
    contains the concept as a word; no repeats; at most ``limit``."""
    out: list[str] = []
    for line in text.splitlines():
        s = _NUMBERING.sub("", _EMPHASIS.sub("", line)).strip().strip('"').strip()
        s = _LABEL.sub("", s).strip().strip('"').strip()
        if (len(s.split()) >= MIN_WORDS and len(s) <= 400 and not s.endswith(":") and concept_span(s, concept)
                and s not in out):
            out.append(s)
        if len(out) == limit:
            break
    return out


def write_shard(lm: SteerModel, shard: StimuliShard) -> dict[str, str]:
    """The writer's reply for each concept of one shard (kept as written: :func:`parse_sentences` reads
    the sentences out of it when the shard is loaded, so a better parser needs no new writing)."""
    prompts = [shard.prompt.format(n=shard.per_concept, concept=c) for c in shard.concepts]
    replies = lm.generate(prompts, max_new_tokens=shard.max_new_tokens, batch_size=shard.batch_size,
                          do_sample=True, temperature=0.8, top_p=0.95, frequency_penalty=0.3, seed=shard.seed,
                          progress=False)
    return dict(zip(shard.concepts, replies, strict=True))


def _sentences(written: Mapping[str, str | list[str]], per_concept: int) -> dict[str, list[str]]:
    """The sentences of one stored shard. A value is the writer's reply, or (shards kept before replies
    were) the sentences an earlier parser took from it, which are parsed again as lines."""
    return {c: parse_sentences(v if isinstance(v, str) else "\n".join(v), c, per_concept) for c, v in written.items()}


def stimuli_folder(writer: str, concepts: Sequence[str], prompt: str, per_concept: int, max_new_tokens: int,
                   seed: int = 0) -> Path:
    """Where the sentences of one (writer, concept list, prompt, settings) are kept."""
    key = json.dumps({"writer": writer, "concepts": list(concepts), "prompt": prompt, "per_concept": per_concept,
                      "max_new_tokens": max_new_tokens, "seed": seed, "sampling": [0.8, 0.95, 0.3]}, sort_keys=True)
    return cache_dir() / "pace-stimuli" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _shard_file(folder: Path, index: int, shard: StimuliShard) -> Path:
    digest = hashlib.sha256(json.dumps([shard.concepts, shard.seed]).encode()).hexdigest()[:12]
    return folder / f"shard-{index}-{digest}.json"


def model_stimuli(writer: SteerModel, concepts: Sequence[str], *, per_concept: int = 10,
                  max_new_tokens: int | None = None, batch_size: int = 16, shard: int = 64,
                  prompt: str = PROMPT, seed: int = 0, folder: str | Path | None = None,
                  run_shards: Callable[[list[StimuliShard], Callable[[int, dict[str, str]], None]], object]
                  | None = None,
                  progress: bool | None = None) -> dict[str, list[str]]:
    """``{concept: sentences}`` written by ``writer`` (a loaded instruct model). Each shard is kept
    in ``folder`` (default: a folder in the user cache named for all the inputs) as soon as it is
    written, and a later call skips the shards found there. ``run_shards(shards, on_result)``
    (default: one after another, here) writes a list of shards elsewhere, e.g. on Ray workers
    (:func:`steerlab.distributed.model_stimuli_tasks`), calling ``on_result(i, replies)`` as shard
    ``i`` finishes so it is kept at once."""
    concepts = list(dict.fromkeys(c.strip() for c in concepts if c.strip()))
    if not concepts:
        raise InputError("No concepts to write stimuli for.")
    if "{concept}" not in prompt:
        raise InputError("The stimulus prompt must contain '{concept}' (and may contain '{n}').")
    if per_concept < 1:
        raise InputError(f"per_concept must be at least 1 (got {per_concept}).")
    max_new_tokens = max_new_tokens or 28 * per_concept
    folder = Path(folder) if folder is not None else stimuli_folder(writer.name, concepts, prompt, per_concept,
                                                                   max_new_tokens, seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards = [StimuliShard(concepts[s: s + shard], per_concept, max_new_tokens, batch_size, prompt, seed + s)
              for s in range(0, len(concepts), shard)]
    manifest = folder / "manifest.json"
    if not manifest.exists():  # what the folder holds, for `steerlab cache` (its name is only a hash)
        text = json.dumps({"writer": writer.name, "n_concepts": len(concepts), "concepts_head": concepts[:5],
                           "per_concept": per_concept, "max_new_tokens": max_new_tokens, "seed": seed,
                           "prompt": prompt, "n_shards": len(shards)}, ensure_ascii=False, indent=1)
        atomic_write(manifest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    out: dict[str, list[str]] = {}
    todo: list[tuple[StimuliShard, Path]] = []
    for i, sh in enumerate(shards):
        path = _shard_file(folder, i, sh)
        if path.exists():
            out.update(_sentences(json.loads(path.read_text(encoding="utf-8")), per_concept))
        else:
            todo.append((sh, path))

    def keep(path: Path, written: dict[str, str]) -> None:
        text = json.dumps(written, ensure_ascii=False)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        out.update(_sentences(written, per_concept))

    def in_process(shards: list[StimuliShard], on_result: Callable[[int, dict[str, str]], None]) -> None:
        for i, sh in enumerate(progress_bar(shards, "stimuli", progress=progress, unit="shard")):
            on_result(i, write_shard(writer, sh))

    if todo:
        (run_shards or in_process)([sh for sh, _ in todo], lambda i, written: keep(todo[i][1], written))
    return {c: out.get(c, []) for c in concepts}
