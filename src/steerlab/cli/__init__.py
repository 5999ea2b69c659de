"""The ``steerlab`` command line. One module per command group (:mod:`.vectors`: extract, generate,
export, info; :mod:`.evaluate`: sweep, reliability; :mod:`.harness`: eval, card; :mod:`.serve`;
:mod:`.pace`; :mod:`.cache`; :mod:`.demo`) and the arguments they share (:mod:`.args`). Commands only translate
arguments into library calls."""

from __future__ import annotations

import argparse
import sys

from ..errors import SteerlabError
from . import cache, demo, evaluate, harness, pace, serve, vectors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerlab", description="Steer language models by editing activations.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (vectors, evaluate, harness, serve, pace, cache, demo):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. The library's own errors (bad input, unreadable files: :class:`SteerlabError`)
    and the operating system's refusals (a missing folder, no permission, a full disk: ``OSError``)
    become one ``error: ...`` line and exit status 2; anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SteerlabError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
