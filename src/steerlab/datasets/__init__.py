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

from ..errors import InputError

BUILTIN = ("sentiment", "refusal", "sycophancy", "weddings")
_META_TAGS = re.compile(r"<META_START>.*?<META_END>", re.DOTALL)
_LETTER = re.compile(r"\(([A-Z])\)?")


class DatasetError(InputError):
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


def answer_letter(answer: str) -> str | None:
    """The option letter of an A/B answer (``"(A)"`` -> ``"A"``), else None."""
    m = _LETTER.fullmatch(answer.strip())
    return m.group(1) if m else None


def matching_is_a(pair: ContrastivePair) -> bool:
    return pair.positive.strip().startswith("(A")


def matching_is_yes(pair: ContrastivePair) -> bool | None:
    """Whether the matching answer is "Yes" (persona items, or A/B items whose matching option reads
    Yes/No); None where the item has no Yes/No format."""
    if "matching_is_yes" in pair.meta:
        return bool(pair.meta["matching_is_yes"])
    pos = pair.positive.strip().lower()
    if pos in ("yes", "no"):
        return pos == "yes"
    letter = answer_letter(pair.positive)
    if letter:  # an A/B item whose matching option text is Yes/No
        m = re.search(rf"\({letter}\):? *(Yes|No)\b", pair.prompt)
        if m:
            return m.group(1) == "Yes"
    return None


def _yes_no_format(pair: ContrastivePair) -> bool:
    """Whether the item's answers are Yes and No (persona items, or options that read exactly Yes/No)."""
    if "matching_is_yes" in pair.meta or pair.positive.strip().lower() in ("yes", "no"):
        return True
    letter = answer_letter(pair.positive)
    return bool(letter and re.search(rf"^ *\({letter}\):? *(Yes|No)\.? *$", pair.prompt, re.M))


def stratum(pair: ContrastivePair, yes_no: bool = True) -> str:
    """The cell a balanced split balances over: the matching answer's letter (``"(A)"``), with
    ``Yes``/``No`` appended when ``yes_no`` and the item has that format; ``"all"`` for open/text items."""
    letter = answer_letter(pair.positive)
    yes = matching_is_yes(pair) if yes_no else None
    parts = ([f"({letter})"] if letter else []) + ([] if yes is None else ["Yes" if yes else "No"])
    return " ".join(parts) or "all"


def _groups(pairs: Sequence[ContrastivePair]) -> dict[str, list[ContrastivePair]]:
    """Items by stratum. Yes/No counts only where it is the data's format (every item has it): an
    x-risk item whose option merely starts with "Yes" is stratified by its letter alone."""
    yes_no = bool(pairs) and all(_yes_no_format(p) for p in pairs)
    groups: dict[str, list[ContrastivePair]] = {}
    for p in pairs:
        groups.setdefault(stratum(p, yes_no), []).append(p)
    return dict(sorted(groups.items()))


def balance(pairs: Sequence[ContrastivePair]) -> dict[str, int]:
    """Items per stratum, e.g. ``{"(A)": 24, "(B)": 24}``."""
    return {k: len(v) for k, v in _groups(pairs).items()}


def describe_balance(pairs: Sequence[ContrastivePair]) -> str:
    return " / ".join(f"{k} {v}" for k, v in balance(pairs).items()) or "empty"


def _quotas(n: int, k: int) -> list[int]:
    return [n // k + (i < n % k) for i in range(k)]


def _interleave(columns: list[list[ContrastivePair]]) -> list[ContrastivePair]:
    """Round-robin over the strata, so that every prefix of the result is as balanced as it can be."""
    out: list[ContrastivePair] = []
    for i in range(max((len(c) for c in columns), default=0)):
        out.extend(c[i] for c in columns if i < len(c))
    return out


def _take(groups: dict[str, list[ContrastivePair]], n: int, what: str) -> list[ContrastivePair]:
    """``n`` items, as equal per stratum as ``n`` allows, removed from the front of each group."""
    quotas = _quotas(n, len(groups))
    short = [(key, q, len(g)) for (key, g), q in zip(groups.items(), quotas, strict=True) if len(g) < q]
    if short:
        key, q, have = short[0]
        most = len(groups) * min(len(g) for g in groups.values())
        raise DatasetError(
            f"A balanced {what} of {n} items needs {q} whose matching answer is {key}, but only {have} are "
            f"left. Ask for at most {most}, or turn balancing off (balance=False, --no-balance) and accept "
            "a letter-biased split.")
    taken = []
    for (key, group), q in zip(groups.items(), quotas, strict=True):
        taken.append(group[:q])
        groups[key] = group[q:]
    return _interleave(taken)


def take(pairs: Sequence[ContrastivePair], n: int | None = None, *, balance: bool = True) -> list[ContrastivePair]:
    """The first ``n`` items (all if None), balanced across strata (see :func:`stratum`) unless
    ``balance=False``; within a stratum the file order is kept."""
    groups = _groups(pairs)
    if not balance or len(groups) < 2:
        return list(pairs[:n] if n is not None else pairs)
    if n is None:
        n = len(groups) * min(len(g) for g in groups.values())
    return _take(groups, n, "selection")


def split(pairs: Sequence[ContrastivePair], train_fraction: float = 0.5, *, n_train: int | None = None,
          n_test: int | None = None, balance: bool = True) -> tuple[list, list]:
    """Train and test halves: earlier items train, later ones test (the reliability papers' halves).

    With ``balance`` (default) both halves hold equally many items of each stratum, the matching
    answer's letter (and Yes/No where present): the first items of each stratum train, the next
    ones test. Taking the first N items of a file instead inherits whatever letter balance the file
    has, and the answer-letter direction then dominates a CAA vector (docs/methods.md). Without a
    size, the halves split the largest balanced subset by ``train_fraction``; items beyond it are
    left out. Text pairs and open answers have one stratum, so nothing is left out for them.
    """
    if not 0 < train_fraction < 1:
        raise InputError("train_fraction must be between 0 and 1.")
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}.")
    groups = _groups(pairs)
    if not balance or len(groups) < 2:
        cut = n_train if n_train is not None else int(round(len(pairs) * train_fraction))
        end = cut + n_test if n_test is not None else len(pairs)
        if cut >= len(pairs):
            raise DatasetError(f"Only {len(pairs)} items: no test items are left after {cut} training items.")
        return list(pairs[:cut]), list(pairs[cut:end])
    smallest = min(len(g) for g in groups.values())
    per_train = int(round(smallest * train_fraction))
    train = _take(groups, n_train if n_train is not None else len(groups) * per_train, "training half")
    smallest_left = min(len(g) for g in groups.values())
    if n_test is None and smallest_left == 0:
        raise DatasetError(f"No balanced test half is left after {len(train)} training items "
                           f"({describe_balance(pairs)} in the data); ask for fewer training items.")
    test = _take(groups, n_test if n_test is not None else len(groups) * smallest_left, "test half")
    return train, test


MAX_FILE_BYTES = 512 * 2**20


def _check_text(value: str, where: str, key: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"{where}: field {key!r} holds an unpaired UTF-16 surrogate (\\ud800-\\udfff); "
                           "fix the text.") from None
    return value


def _need(item: Any, key: str, where: str) -> str:
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(item).__name__}.")
    if key not in item:
        raise DatasetError(f"{where}: missing field {key!r}.")
    value = item[key]
    if not isinstance(value, str) or (key != "question" and not value.strip()):
        raise DatasetError(f"{where}: field {key!r} must be a non-empty string, got {str(value)[:80]!r}.")
    return _check_text(value, where, key)


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = f"line {err.lineno}: " if "line" not in where else ""
        raise DatasetError(f"{where}: not valid JSON ({line}{err.msg}).") from None
    except (ValueError, RecursionError) as err:  # 5,000-digit integers, nesting deeper than Python recurses
        raise DatasetError(f"{where}: JSON the loader refuses ({type(err).__name__}: {str(err)[:120]}).") from None


def _read_text(path: Path) -> str:
    """The file's text; anything that is not a readable UTF-8 file is a DatasetError naming it."""
    if not path.exists():
        raise DatasetError(f"No dataset file at {path}.")
    if not path.is_file():  # a directory, a FIFO or a device would hang or fail further down
        raise DatasetError(f"{path} is not a regular file; give a dataset file (.json or .jsonl).")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DatasetError(f"{path} is over {MAX_FILE_BYTES // 2**20} MiB; split it into smaller files.")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {line}: not UTF-8 text (byte {raw[err.start]:#04x} at offset "
                           f"{err.start}); save the file as UTF-8.") from None


def _records(path: Path) -> Iterable[tuple[str, Any]]:
    path = Path(path)
    text = _read_text(path)
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                where = f"{path}, line {number}"
                yield where, _parse(line, where)
        return
    data = _parse(text, str(path))
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
        _check_text(prompt, where, "prompt")
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
    elif "statement" in item or str(item.get("answer_matching_behavior", "")).strip() in ("Yes", "No"):
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
        letters = [m.group(1) for a in (p.positive, p.negative) if (m := _LETTER.search(a))]
        if len(letters) != 2 or any(letter not in options for letter in letters):
            raise DatasetError(f"{p.meta.get('source', 'item')}: cannot find options {letters} in the question.")
        first = min(m.start() for m in _OPTION.finditer(p.prompt))  # options exist: checked above
        prompt = re.sub(r"\n*Choices:\s*$", "", p.prompt[:first].rstrip()).rstrip()
        out.append(ContrastivePair(prompt, options[letters[0]], options[letters[1]], {**p.meta, "open": True}))
    return out


_OPTION_START = re.compile(r"^[ \t]*\(([A-Z])\):?[ \t]?", re.M)


def swap_options(pair: ContrastivePair) -> ContrastivePair | None:
    """The same A/B item with the texts of its two answer options exchanged and both answers'
    letters flipped: ``"(A) x / (B) y"``, matching ``(A)`` becomes ``"(A) y / (B) x"``, matching
    ``(B)``. The behaviour is unchanged; only which letter carries it moves. None where the item is
    not an A/B item whose two options start lines of the prompt. Where the prompt shows several
    blocks of options (worked examples before the question), the last block is the question's.
    """
    a, b = answer_letter(pair.positive), answer_letter(pair.negative)
    if a is None or b is None or a == b:
        return None
    markers = list(_OPTION_START.finditer(pair.prompt))
    last = {letter: max((i for i, m in enumerate(markers) if m.group(1) == letter), default=-1) for letter in (a, b)}
    block = {markers[i].group(1) for i in range(len(markers) - 2, len(markers)) if i >= 0}
    if min(last.values()) < 0 or block != {a, b}:
        return None
    spans = {}
    for letter, i in last.items():
        start = markers[i].end()
        end = markers[i + 1].start() if i + 1 < len(markers) else len(pair.prompt)
        text = pair.prompt[start:end].rstrip()
        spans[letter] = (start, start + len(text), text)
    # Replace the later span first so the earlier one's offsets stay valid.
    prompt = pair.prompt
    for letter, other in sorted(((a, b), (b, a)), key=lambda lo: -spans[lo[0]][0]):
        start, end, _ = spans[letter]
        prompt = prompt[:start] + spans[other][2] + prompt[end:]
    flip = {a: b, b: a}

    def relabel(answer: str) -> str:
        return _LETTER.sub(lambda m: m.group(0).replace(m.group(1), flip[m.group(1)]), answer, count=1)

    return ContrastivePair(prompt, relabel(pair.positive), relabel(pair.negative), {**pair.meta, "swapped": True})


def counterbalanced(pairs: Sequence[ContrastivePair]) -> list[ContrastivePair] | None:
    """``pairs`` followed by each with its options swapped (:func:`swap_options`), or None if any
    item cannot be swapped."""
    swapped = [swap_options(p) for p in pairs]
    if not pairs or any(s is None for s in swapped):
        return None
    return list(pairs) + [s for s in swapped if s is not None]


def builtin_path(name: str) -> Path:
    if name not in BUILTIN:
        raise DatasetError(f"No built-in dataset {name!r}; available: {', '.join(BUILTIN)}.")
    return Path(str(resources.files("steerlab.datasets").joinpath("data", f"{name}.jsonl")))


def builtin(name: str) -> list[ContrastivePair]:
    path = builtin_path(name)
    return load_text_pairs(path) if name == "weddings" else load_ab(path)
