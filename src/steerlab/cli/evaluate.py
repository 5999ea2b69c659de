"""``steerlab sweep | reliability``: layer sweeps and the reliability analysis."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .args import add_model_args, load_model, model_spec, parse_layers, ray_args, split_args, train_test

if TYPE_CHECKING:
    from ..model import SteerModel


@dataclass(frozen=True)
class ReliabilityTask:
    """One dataset's reliability run (what a Ray worker receives)."""

    train: list
    test: list
    dataset: str
    layer: int
    scale: float
    chat: bool
    generalisation: bool
    counterbalance: bool | None
    progress: bool


def _reliability_task(lm: SteerModel, task: ReliabilityTask):
    from ..evaluate.generalisation import generalisation
    from ..evaluate.reliability import reliability
    from ..methods import caa

    vec = caa.extract(lm, task.train, task.layer, chat=task.chat, counterbalance=task.counterbalance, progress=False)
    report = reliability(lm, vec, task.test, scale=task.scale, dataset=task.dataset, chat=task.chat,
                         letter_pairs=task.train, progress=task.progress)
    gen = generalisation(lm, task.train, task.test, task.layer, dataset=task.dataset, scale=task.scale, chat=task.chat,
                         counterbalance=task.counterbalance, progress=False) if task.generalisation else None
    return report, gen


def cmd_sweep(args) -> int:
    from pathlib import Path

    from ..distributed import layer_sweep_tasks
    from ..evaluate.sweep import layer_sweep

    lm = load_model(args)
    train, test = train_test(args)
    layers = args.layers or list(range(1, lm.num_layers - 1))
    options = dict(dataset=str(args.data), method=args.method, chat=args.chat, system=args.system,
                   counterbalance=args.counterbalance)
    if args.ray is None and not args.resume:
        result = layer_sweep(lm, train, test, layers, args.multipliers, **options)
    else:
        result = layer_sweep_tasks(lm, train, test, layers, args.multipliers, ray=args.ray, workers=args.ray_workers,
                                   model_spec=model_spec(args) if args.ray else None,
                                   resume_dir=Path(args.out) / ".tasks" if args.resume else None, **options)
    path = result.save(args.out)
    print(f"unsteered p(matching) = {result.baseline:.3f}\n{result.table()}\n"
          f"recommended layer {result.recommended_layer}: {result.how_chosen}\nwrote {path}")
    return 0


def cmd_reliability(args) -> int:
    from pathlib import Path

    from ..distributed import map_tasks

    lm = load_model(args) if args.ray is None else None
    tasks = []
    for data in args.data:
        train, test = train_test(args, data)
        tasks.append(ReliabilityTask(train, test, str(data), args.layer, args.scale, args.chat, args.generalisation,
                                     args.counterbalance, progress=args.ray is None))

    def report(i: int, result) -> None:  # written as soon as each dataset finishes
        rep, gen = result
        stem = Path(str(args.data[i])).stem
        print(rep.summary())
        print(f"wrote {rep.save(args.out, f'reliability-{stem}')}", flush=True)
        if gen is not None:
            rel = ", ".join(f"{k} {v:+.2f}" if v is not None else f"{k} n/a"
                            for k, v in gen.relative_steerability.items())
            print(f"ID steerability {gen.id_steerability:+.3f}; relative OOD steerability: {rel}")
            print(f"wrote {gen.save(args.out, f'generalisation-{stem}')}", flush=True)

    map_tasks(_reliability_task, tasks, model=lm if lm is not None else model_spec(args), ray=args.ray,
              workers=args.ray_workers, resume_dir=Path(args.out) / ".tasks" if args.resume else None,
              desc="datasets", on_result=report)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="CAA layer x multiplier sweep of p(matching) on held-out pairs, with a plot")
    add_model_args(p)
    p.add_argument("--data", required=True, help="dataset file or built-in name")
    p.add_argument("--layers", type=parse_layers, default=None, help="default: every layer but the first and last")
    p.add_argument("--multipliers", type=lambda t: [float(x) for x in t.split(",")], default=[-1.0, 1.0],
                   help="comma-separated; write --multipliers=-8,-2,2,8 (default -1,1)")
    p.add_argument("--method", default="mean", choices=["mean", "pca", "probe"])
    p.add_argument("--open-answers", action="store_true",
                   help="score and extract on the option texts instead of the letters (A)/(B)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--system", default=None)
    split_args(p)
    p.add_argument("--out", default="steerlab-out/sweep", help="folder for .md, .json and .png")
    ray_args(p, "blocks of layers")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("reliability", help="per-item steerability, anti-steerable fraction, spurious factors")
    add_model_args(p)
    p.add_argument("--data", required=True, nargs="+",
                   help="dataset file(s) or built-in name(s); earlier items train, later ones test")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplier unit: slopes are over {-1.5..1.5} x scale (default 1)")
    p.add_argument("--open-answers", action="store_true")
    p.add_argument("--generalisation", action="store_true",
                   help="also train/evaluate on system-prompt and user-prefix variants (heat-map)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True)
    split_args(p)
    p.add_argument("--out", default="steerlab-out/reliability")
    ray_args(p, "one task per dataset")
    p.set_defaults(func=cmd_reliability)
