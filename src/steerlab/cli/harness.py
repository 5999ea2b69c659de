"""``steerlab eval``: lm-evaluation-harness tasks on a steered model, in-process (no server)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .args import add_model_args, load_model

if TYPE_CHECKING:
    from ..model import SteerModel


def lm_eval_or_explain():
    try:
        import lm_eval
    except ImportError:
        raise InputError("lm-evaluation-harness is not installed: pip install 'steerlab[eval]' "
                         "(or pip install 'lm-eval[api]').") from None
    return lm_eval


def steering_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", action="append", default=[], metavar="FILE[:MULT]",
                   help="a steering vector file and its multiplier (repeatable)")
    p.add_argument("--layers", default=None, help="only these layers of the vectors, e.g. 8 or 8,9")
    p.add_argument("--window", default="own",
                   help="where the vectors act: own (the vector's own window) | all | assistant | generated | user")


def spec_of(args):
    """The --vector/--layers/--window arguments as a checked steering spec."""
    from dataclasses import replace

    from ..spec import SteeringSpec
    from .args import parse_layers

    layers = tuple(parse_layers(args.layers)) if args.layers else None
    spec = SteeringSpec.from_cli(args.vector)
    spec = SteeringSpec(tuple(replace(e, window=args.window, layers=layers) for e in spec.vectors))
    return SteeringSpec.from_dict(spec.to_dict())  # an unknown window is an error that names it


def run_tasks(lm: SteerModel, spec, tasks: list[str], *, behaviour: list[str], limit: int | None, batch_size: int,
              chat_template: bool, task_folder: str | None) -> dict:
    """lm-eval's ``simple_evaluate`` with a steerlab model under ``spec``; returns its results dict."""
    lm_eval = lm_eval_or_explain()
    from ..evaluate.harness import SteerlabLM, task_manager
    from ..evaluate.tasks import task_name

    manager = task_manager(task_folder, behaviour_files=behaviour)
    names = list(tasks) + [task_name(b) for b in behaviour]
    if not names:
        raise InputError("Name at least one task (--tasks) or behaviour file (--behaviour).")
    model = SteerlabLM(lm=lm, steering=spec, batch_size=batch_size)
    return lm_eval.simple_evaluate(model=model, tasks=names, task_manager=manager, limit=limit,
                                   apply_chat_template=chat_template, log_samples=False)


def cmd_eval(args) -> int:
    from lm_eval.utils import make_table  # after the install check in run_tasks' import

    lm = load_model(args)
    spec = spec_of(args)
    results = run_tasks(lm, spec, [t for t in args.tasks.split(",") if t], behaviour=args.behaviour,
                        limit=args.limit or None, batch_size=args.batch_size,
                        chat_template=args.apply_chat_template, task_folder=args.task_folder)
    print(f"steering: {json.dumps(spec.to_dict()) if spec else 'none'}")
    print(make_table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    path.write_text(json.dumps({"steering": spec.to_dict(), "model": lm.name, "results": results["results"],
                                "n-samples": results.get("n-samples")}, indent=2, default=str))
    print(f"wrote {path}")
    return 0


def cmd_card(args) -> int:
    from .. import datasets
    from ..evaluate.card import dose_response
    from ..vector import SteeringVector

    lm_eval_or_explain()
    lm = load_model(args)
    vector = SteeringVector.load(args.vector, lm)
    behaviour = datasets.load(args.behaviour)
    if args.split == "test":  # the half a vector made with `extract` (default --train-fraction 0.5) did not see
        behaviour = datasets.split(behaviour)[1]
    behaviour = datasets.take(behaviour, args.behaviour_items or None)
    if args.open_answers:
        behaviour = datasets.to_open_answers(behaviour)
    name = (f"{args.behaviour}{' (test half)' if args.split == 'test' else ''}"
            f"{', option texts' if args.open_answers else ''}")
    card = dose_response(lm, vector, Path(args.vector).stem, behaviour, args.multipliers,
                         tasks=[t for t in args.tasks.split(",") if t], behaviour_name=name,
                         budget=args.budget, limit=args.limit or None, chat_template=args.chat_template,
                         task_folder=args.task_folder)
    md = card.save(args.out)
    print(card.table())
    print(f"wrote {md}, {md.with_suffix('.json')}, {md.with_suffix('.png')}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="run lm-evaluation-harness tasks on a steered model (in-process)",
                       description="Runs lm-eval tasks with a steerlab model. Offline tasks: steerlab_quiz, "
                                   "steerlab_facts, steerlab_facts_mc, and steerlab_ab_<name> for each --behaviour "
                                   "file; lm-eval's own tasks (mmlu, hellaswag, ...) work where their data can be "
                                   "downloaded.")
    add_model_args(p)
    steering_args(p)
    p.add_argument("--tasks", default="steerlab_quiz", help="comma-separated lm-eval task names")
    p.add_argument("--behaviour", action="append", default=[], metavar="FILE",
                   help="an A/B behaviour file (CAA JSON / MWE JSONL) to run as task steerlab_ab_<name>")
    p.add_argument("--limit", type=int, default=0, help="at most this many documents per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--apply-chat-template", action="store_true",
                   help="render each document as a chat turn (then CAA's own window starts at the answer)")
    p.add_argument("--task-folder", default=None, help="where the offline task files are written (default: cache)")
    p.add_argument("--out", default="steerlab-out/eval")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("card", help="dose-response card: behaviour and capability at each multiplier",
                       description="For one vector and a range of multipliers: p(matching) on an A/B behaviour set, "
                                   "lm-eval task accuracy, perplexity and KL from the unsteered model on neutral "
                                   "text; writes card.md, card.json and card.png and the multiplier range that "
                                   "loses at most --budget accuracy points.")
    add_model_args(p)
    p.add_argument("--vector", required=True, help="the steering vector file")
    p.add_argument("--behaviour", required=True, help="A/B behaviour data: a built-in set name or a file")
    p.add_argument("--behaviour-items", type=int, default=50, help="items of it (balanced by answer letter; 0: all)")
    p.add_argument("--split", choices=["all", "test"], default="all",
                   help="test: score only the held-out half of a balanced split (as extract's default training half "
                        "leaves it)")
    p.add_argument("--open-answers", action="store_true",
                   help="score the option texts as answers instead of the letters (datasets.to_open_answers)")
    p.add_argument("--multipliers", type=lambda t: [float(x) for x in t.split(",")], default=[-8, -4, -2, 0, 2, 4, 8],
                   help="comma-separated; write --multipliers=-8,-4,0,4,8 (0 is always added)")
    p.add_argument("--tasks", default="steerlab_quiz,steerlab_facts_mc", help="capability tasks (lm-eval names)")
    p.add_argument("--budget", type=float, default=2.0, help="accuracy points that may be lost (default 2)")
    p.add_argument("--limit", type=int, default=0, help="at most this many documents per task")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="chat-format task documents (default: when the model has a chat template)")
    p.add_argument("--task-folder", default=None, help="where the offline task files are written (default: cache)")
    p.add_argument("--out", default="steerlab-out/card")
    p.set_defaults(func=cmd_card)
