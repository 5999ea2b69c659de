"""Contrastive pair datasets: CAA JSON, Anthropic MWE persona / x-risk JSONL, plain text pairs,
and the built-in sets this project wrote (``steerlab.datasets.builtin(name)``).

Every loader validates every item; a malformed one raises :class:`DatasetError` naming the file,
line (or list index) and field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

BUILTIN = ("sentiment", "refusal", "sycophancy", "weddings")
_META_TAGS = re.compile(r"<META_START>.*?<META_END>", re.DOTALL)
_LETTER = re.compile(r"\(([A-Z])\)?")


class DatasetError(ValueError):
    """A dataset file or item is malformed; the message names where and what."""


@dataclass(frozen=True)
class ContrastivePair:
    """One item: a prompt (the user turn; may be empty) and two answers.

    ``positive`` shows the behaviour, ``negative`` does not. For A/B items these are answer
    strings such as ``"(A)"``; for text pairs they are whole texts.
    """

    prompt: str
    positive: str
    negative: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(_LETTER.fullmatch(self.positive.strip())) and bool(_LETTER.fullmatch(self.negative.strip()))


def read_char(answer: str) -> int:
    """Character of ``answer`` whose token is read: the letter of ``(A)``, else the last non-space one."""
    m = _LETTER.search(answer)
    if m and answer.strip().startswith("("):
        return m.start(1)
    stripped = answer.rstrip()
    if not stripped:
        raise DatasetError("An answer is empty.")
    return len(stripped) - 1


def fingerprint(pairs: Sequence[ContrastivePair]) -> str:
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.prompt, p.positive, p.negative]).encode())
    return digest.hexdigest()[:16]


def split(pairs: Sequence[ContrastivePair], train_fraction: float = 0.5) -> tuple[list, list]:
    """First part trains, the rest tests (the reliability papers' convention: halves)."""
    if not 0 < train_fraction < 1:
        raise ValueError("train_fraction must be between 0 and 1.")
    cut = int(round(len(pairs) * train_fraction))
    return list(pairs[:cut]), list(pairs[cut:])


def _need(item: Any, key: str, where: str) -> str:
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(item).__name__}.")
    if key not in item:
        raise DatasetError(f"{where}: missing field {key!r}.")
    value = item[key]
    if not isinstance(value, str) or (key != "question" and not value.strip()):
        raise DatasetError(f"{where}: field {key!r} must be a non-empty string, got {value!r}.")
    return value


def _jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where}: not valid JSON ({err.msg}).") from None


def _records(path: Path) -> Iterable[tuple[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"No dataset file at {path}.")
    if path.suffix == ".jsonl":
        yield from _jsonl(path)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}).") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of items.")
    for i, item in enumerate(data):
        yield f"{path}, item {i}", item


def load_ab(path: str | Path) -> list[ContrastivePair]:
    """CAA JSON / MWE x-risk JSONL: ``question`` holds the options, answers are ``(A)``/``(B)``."""
    pairs = []
    for where, item in _records(Path(path)):
        q = _META_TAGS.sub("", _need(item, "question", where)).strip()
        pos = _need(item, "answer_matching_behavior", where).strip()
        neg = _need(item, "answer_not_matching_behavior", where).strip()
        pairs.append(ContrastivePair(q, pos, neg, {"source": where}))
    return pairs


def load_persona(path: str | Path) -> list[ContrastivePair]:
    """MWE persona JSONL (Yes/No answers) rendered as A/B choices, the matching answer placed at (A)
    and (B) alternately, every other pair of items (so the letter is not confounded with behaviour)."""
    pairs = []
    for i, (where, item) in enumerate(_records(Path(path))):
        q = _need(item, "question", where).strip()
        match = _need(item, "answer_matching_behavior", where).strip()
        other = _need(item, "answer_not_matching_behavior", where).strip()
        match_first = (i // 2) % 2 == 0
        a, b = (match, other) if match_first else (other, match)
        prompt = f"{q}\n\nChoices:\n(A): {a}\n(B): {b}"
        pos, neg = ("(A)", "(B)") if match_first else ("(B)", "(A)")
        pairs.append(ContrastivePair(prompt, pos, neg, {"source": where, "matching_is_yes": match == "Yes"}))
    return pairs


def load_text_pairs(path: str | Path) -> list[ContrastivePair]:
    """JSONL/JSON of ``{"positive": ..., "negative": ...}`` with an optional ``"prompt"``."""
    pairs = []
    for where, item in _records(Path(path)):
        pos = _need(item, "positive", where)
        neg = _need(item, "negative", where)
        prompt = item.get("prompt", "") if isinstance(item, dict) else ""
        if not isinstance(prompt, str):
            raise DatasetError(f"{where}: field 'prompt' must be a string.")
        pairs.append(ContrastivePair(prompt, pos, neg, {"source": where}))
    return pairs


def load(path_or_name: str | Path) -> list[ContrastivePair]:
    """Load a built-in set by name, or a file in any supported format (detected from its fields)."""
    if str(path_or_name) in BUILTIN:
        return builtin(str(path_or_name))
    path = Path(path_or_name)
    first = next(iter(_records(path)), None)
    if first is None:
        raise DatasetError(f"{path} holds no items.")
    where, item = first
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected a JSON object.")
    if "positive" in item:
        pairs = load_text_pairs(path)
    elif "statement" in item or item.get("answer_matching_behavior", "").strip() in ("Yes", "No"):
        pairs = load_persona(path)
    elif "answer_matching_behavior" in item:
        pairs = load_ab(path)
    else:
        raise DatasetError(
            f"{where}: unknown format; expected fields question/answer_matching_behavior/"
            "answer_not_matching_behavior (CAA, MWE) or positive/negative (text pairs)."
        )
    for p in pairs:
        if p.is_multiple_choice and p.positive.strip() == p.negative.strip():
            raise DatasetError(f"{p.meta['source']}: both answers are {p.positive!r}.")
    return pairs


_OPTION = re.compile(r"^ *\(([A-Z])\):? ?(.*)$", re.M)


def to_open_answers(pairs: Sequence[ContrastivePair]) -> list[ContrastivePair]:
    """A/B items rewritten with the option *texts* as the answers and the choices removed from the
    prompt, e.g. ``"(A)"`` -> ``"It was wonderful."``. Small models that answer letters at chance
    still score and steer whole answers (see docs/RESULTS.md)."""
    out = []
    for p in pairs:
        options = {m.group(1): m.group(2).strip() for m in _OPTION.finditer(p.prompt)}
        letters = [_LETTER.search(a).group(1) for a in (p.positive, p.negative) if _LETTER.search(a)]
        if len(letters) != 2 or any(letter not in options for letter in letters):
            raise DatasetError(f"{p.meta.get('source', 'item')}: cannot find options {letters} in the question.")
        first = _OPTION.search(p.prompt).start()
        prompt = re.sub(r"\n*Choices:\s*$", "", p.prompt[:first].rstrip()).rstrip()
        out.append(ContrastivePair(prompt, options[letters[0]], options[letters[1]], {**p.meta, "open": True}))
    return out


def builtin_path(name: str) -> Path:
    if name not in BUILTIN:
        raise DatasetError(f"No built-in dataset {name!r}; available: {', '.join(BUILTIN)}.")
    return Path(str(resources.files("steerlab.datasets").joinpath("data", f"{name}.jsonl")))


def builtin(name: str) -> list[ContrastivePair]:
    path = builtin_path(name)
    return load_text_pairs(path) if name == "weddings" else load_ab(path)
