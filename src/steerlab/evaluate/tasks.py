"""lm-evaluation-harness task definitions over local files this module writes, so lm-eval runs
offline (it would otherwise download its data sets).

:func:`write_tasks` writes, into one folder, a JSONL file and a YAML task per set:

- ``steerlab_quiz``: the built-in general-knowledge A/B quiz as a multiple-choice task (``acc``: the
  share of questions whose right letter is the likelier continuation).
- ``steerlab_facts``: the built-in fact completions as a generation task (``exact_match`` of the
  greedy completion, cut at the first newline or full stop, against the answer).
- ``steerlab_facts_mc``: the same facts as a log-likelihood task (the right answer among four: it
  and the three answers after it in the set's sorted answer list).
- ``steerlab_ab_<name>``: any A/B behaviour file (CAA JSON, MWE JSONL, persona JSONL; see
  :func:`steerlab.datasets.load`) as a multiple-choice task whose ``acc`` is the share of items where
  the behaviour-matching letter is the likelier one (the behaviour rate).

Point lm-eval at the folder with ``--include_path`` (or :func:`steerlab.evaluate.harness.task_manager`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from ..datasets import ContrastivePair, answer_letter, load
from ..errors import InputError
from ..safefile import atomic_write
from ..sources import cache_dir
from .capability import load_facts, load_general_knowledge

BUILTIN_TASKS = ("steerlab_quiz", "steerlab_facts", "steerlab_facts_mc")


def default_folder() -> Path:
    return cache_dir() / "lm-eval-tasks"


def task_name(path: str | Path) -> str:
    """``steerlab_ab_<file stem>``, with characters lm-eval task names cannot hold replaced."""
    return "steerlab_ab_" + re.sub(r"[^A-Za-z0-9_]+", "_", Path(path).stem).strip("_").lower()


def _choice_rows(pairs: Sequence[ContrastivePair], where: str) -> list[dict]:
    rows = []
    for i, p in enumerate(pairs):
        pos, neg = answer_letter(p.positive), answer_letter(p.negative)
        if pos is None or neg is None or pos == neg:
            raise InputError(f"{where}: item {i} is not an A/B item (answers {p.positive!r} / {p.negative!r}); "
                             "a behaviour task needs letter answers such as (A) and (B).")
        letters = sorted({pos, neg})
        rows.append({"question": p.prompt, "choices": [f"({c})" for c in letters], "target": letters.index(pos)})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    atomic_write(path, write)


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)


def _yaml(name: str, data: Path, body: str) -> str:
    # JSON is YAML: strings are written with json.dumps so any path or text is quoted safely.
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            f"test_split: test\n{body}metadata:\n  version: 1.0\n")


_MC = ('output_type: multiple_choice\ndoc_to_text: "{{question}}\\n\\nAnswer:"\ndoc_to_choice: choices\n'
       'doc_to_target: target\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n')


def write_tasks(folder: str | Path | None = None, behaviour_files: Sequence[str | Path] = ()) -> Path:
    """Write the built-in tasks and one task per behaviour file into ``folder`` (default: the user
    cache); returns the folder."""
    folder = Path(folder) if folder is not None else default_folder()
    folder.mkdir(parents=True, exist_ok=True)
    quiz = folder / "steerlab_quiz.jsonl"
    _write_jsonl(quiz, _choice_rows(load_general_knowledge(), "the built-in quiz"))
    _write_text(folder / "steerlab_quiz.yaml", _yaml("steerlab_quiz", quiz, _MC))
    facts = load_facts()
    answers = sorted({a.strip() for _, a in facts})
    facts_path = folder / "steerlab_facts.jsonl"
    rows = []
    for p, a in facts:
        k = answers.index(a.strip())
        options = sorted(answers[(k + j) % len(answers)] for j in range(min(4, len(answers))))
        rows.append({"prompt": p, "answer": a.strip(), "choices": options, "target": options.index(a.strip())})
    _write_jsonl(facts_path, rows)
    _write_text(folder / "steerlab_facts.yaml", _yaml("steerlab_facts", facts_path, (
        'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: answer\n'
        'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 8\n  do_sample: false\n  temperature: 0.0\n'
        'metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n'
        '    ignore_case: true\n    ignore_punctuation: true\n    regexes_to_ignore: ["\\\\s"]\n')))
    _write_text(folder / "steerlab_facts_mc.yaml", _yaml("steerlab_facts_mc", facts_path, (
        'output_type: multiple_choice\ndoc_to_text: "{{prompt}}"\ndoc_to_choice: choices\n'
        'doc_to_target: target\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n')))
    for path in behaviour_files:
        name = task_name(path)
        data = folder / f"{name}.jsonl"
        _write_jsonl(data, _choice_rows(load(path), str(path)))
        _write_text(folder / f"{name}.yaml", _yaml(name, data, _MC))
    return folder


if __name__ == "__main__":  # python -m steerlab.evaluate.tasks [FOLDER] [BEHAVIOUR_FILE ...]
    import sys

    print(write_tasks(sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2:]))
