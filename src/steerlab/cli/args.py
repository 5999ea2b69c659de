"""Arguments and helpers shared by the command groups: model loading, layer lists, balanced splits,
Ray options."""

from __future__ import annotations

import argparse


def parse_layers(text: str) -> list[int]:
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            layers.extend(range(int(a), int(b) + 1))
        elif part:
            layers.append(int(part))
    if not layers:
        raise argparse.ArgumentTypeError("give layers like 12 or 8,12,16 or 6-10")
    return layers


def add_model_args(p: argparse.ArgumentParser) -> None:
    from ..sources import BUILTIN_MODELS, DEFAULT_MODEL

    names = ", ".join(f"{n} [default]" if n == DEFAULT_MODEL else n for n in BUILTIN_MODELS)
    p.add_argument("--model", default=None, help=f"built-in name ({names}), hub id, model directory or .gguf file")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")


def load_model(args):
    from ..model import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device)


def train_test(args, data=None):
    """The --data set (option texts as answers with --open-answers), split into a training and a test
    part that are balanced by the matching answer's letter unless --no-balance; sizes --train/--test."""
    from .. import datasets

    pairs = datasets.load(data or args.data)
    if args.open_answers:
        pairs = datasets.to_open_answers(pairs)
    sizes = dict(n_train=args.train or args.limit or None, n_test=args.test or args.limit or None)
    train, test = datasets.split(pairs, **sizes, balance=not args.no_balance)
    print(f"{data or args.data}: {len(train)} training pairs ({datasets.describe_balance(train)}), "
          f"{len(test)} test pairs ({datasets.describe_balance(test)})", flush=True)
    return train, test


def split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", type=int, default=0, help="training pairs (default: half of the balanced data)")
    p.add_argument("--test", type=int, default=0, help="test pairs (default: the rest of the balanced data)")
    p.add_argument("--limit", type=int, default=0, help="at most this many train and test pairs each (--train/--test)")
    p.add_argument("--no-balance", action="store_true",
                   help="take items in file order instead of balancing both parts by the matching answer's letter")
    counterbalance_arg(p)


def counterbalance_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--counterbalance", action=argparse.BooleanOptionalAction, default=None,
                   help="also read each A/B item with its options swapped so the answer-letter direction cancels "
                        "(default: whenever every item's options can be swapped)")


def ray_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help=f"run {what} as Ray tasks: on a new local Ray instance, or on the cluster at ADDRESS")
    p.add_argument("--ray-workers", type=int, default=2, help="Ray workers, each loading the model once")
    p.add_argument("--resume", action="store_true",
                   help="keep finished tasks in OUT/.tasks and skip them when the same run is started again")


def model_spec(args):
    from ..distributed import ModelSpec

    return ModelSpec(args.model, dtype=args.dtype, device=args.device)
