"""``steerlab demo``: the main job on the embedded model."""

from __future__ import annotations


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, model=args.model, quick=args.quick)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="the main job: ActAdd and CAA on the embedded model, with a report")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="steerlab-out/demo", help="report folder (default steerlab-out/demo)")
    p.add_argument("--quick", action="store_true", help="fewer samples (used by the tests)")
    p.set_defaults(func=cmd_demo)
