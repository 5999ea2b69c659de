"""``steerlab extract | generate | export | info``: make, use and inspect vector files."""

from __future__ import annotations

import argparse
import json
import math
import sys

from .args import add_model_args, counterbalance_arg, load_model, parse_layers


def cmd_extract(args) -> int:
    from .. import datasets
    from ..methods import actadd, caa

    lm = load_model(args)
    if args.method == "actadd":
        if not (args.positive and args.negative):
            print("error: --method actadd needs --positive and --negative prompts", file=sys.stderr)
            return 2
        if len(args.layers) != 1:
            print("error: ActAdd uses one layer; give --layers L", file=sys.stderr)
            return 2
        vec = actadd.extract(lm, args.positive, args.negative, args.layers[0], coeff=args.coeff, chat=args.chat)
    else:
        if not args.data:
            print(f"error: --method {args.method} needs --data (a file or one of {', '.join(datasets.BUILTIN)})",
                  file=sys.stderr)
            return 2
        pairs = datasets.load(args.data)
        balance = not args.no_balance
        if args.train_fraction < 1:
            pairs, _ = datasets.split(pairs, args.train_fraction, n_train=args.limit or None, balance=balance)
        else:
            pairs = datasets.take(pairs, args.limit or None, balance=balance)
        vec = caa.extract(lm, pairs, args.layers, method=args.method.removeprefix("caa-") if args.method != "caa"
                          else "mean", chat=args.chat, system=args.system, batch_size=args.batch_size,
                          counterbalance=args.counterbalance)
        vec.meta["dataset"] = str(args.data)
    path = vec.save(args.out)
    trained = f" from {vec.meta['n_pairs']} pairs ({vec.meta['balance']})" if "balance" in vec.meta else ""
    print(f"wrote {path}: {vec}{trained}")
    return 0


def cmd_generate(args) -> int:
    from ..spec import ActAddEntry, SteeringFactory, SteeringSpec

    lm = load_model(args)
    spec = SteeringSpec.from_cli(args.vector or [])
    if args.actadd:
        pos, neg = args.actadd
        spec = SteeringSpec(spec.vectors, ActAddEntry(pos, neg, args.actadd_layer, args.actadd_coeff, args.actadd_mode))
    factory = SteeringFactory(lm, actadd_mode=args.actadd_mode, allow_other_model=args.allow_other_model,
                              chat=not args.raw)
    steering = factory.build(spec)
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    opts = dict(max_new_tokens=args.max_new_tokens, chat=not args.raw, system=args.system, do_sample=args.sample,
                temperature=args.temperature, top_p=args.top_p, frequency_penalty=args.frequency_penalty)
    plain = lm.generate(prompts, seed=args.seed, **opts)
    steered = lm.generate(prompts, steering=steering, seed=args.seed, **opts) if steering else plain
    rows = [{"prompt": p, "unsteered": a, "steered": b} for p, a, b in zip(prompts, plain, steered, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for r in rows:
            print(f"=== {r['prompt']}\n--- unsteered: {r['unsteered']}\n+++ steered:   {r['steered']}\n")
    return 0


def cmd_export(args) -> int:
    from ..gguf_io import export_control_vector
    from ..vector import SteeringVector

    vec = SteeringVector.load(args.vector)
    if args.multiplier != 1.0:
        vec = vec * args.multiplier
    path = export_control_vector(vec, args.out, model_hint=args.model_hint)
    print(f"wrote {path} (llama.cpp: --control-vector {path}; layer N of this file = output of block N)")
    return 0


def cmd_info(args) -> int:
    from ..vector import SteeringVector

    vec = SteeringVector.load(args.vector)
    info = {k: v for k, v in vec.header().items() if k != "meta"}
    info["norms"] = {str(k): round(n, 4) for k, n in vec.norms().items()}
    info["shapes"] = {str(k): list(t.shape) for k, t in vec.layers.items()}
    info["meta"] = {k: v for k, v in vec.meta.items() if not k.endswith("_ids")}
    print(json.dumps(_strict_json(info), indent=2, ensure_ascii=False, allow_nan=False))
    return 0


def _strict_json(value: object) -> object:
    """``value`` with non-finite floats (which metadata may hold) written as strings ("inf", "nan"), so
    the output is JSON that strict parsers accept."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser("extract", help="extract a steering vector (ActAdd or CAA) into a .safetensors file")
    add_model_args(p)
    p.add_argument("--method", default="caa", choices=["caa", "caa-pca", "caa-probe", "actadd"])
    p.add_argument("--data", help="dataset file (CAA JSON, MWE JSONL, text pairs) or built-in name")
    p.add_argument("--positive", help="ActAdd: the positive prompt, e.g. 'Love'")
    p.add_argument("--negative", help="ActAdd: the negative prompt, e.g. 'Hate'")
    p.add_argument("--coeff", type=float, default=1.0, help="ActAdd coefficient c baked into the vector")
    p.add_argument("--layers", type=parse_layers, required=True, help="e.g. 12 or 8,12,16 or 6-10")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="render through the chat template (default: on)")
    p.add_argument("--system", default=None, help="system prompt for chat rendering")
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="the training part of a balanced split is used (default 0.5; 1 = all of the data)")
    p.add_argument("--limit", type=int, default=0, help="use at most this many pairs (balanced by letter)")
    p.add_argument("--no-balance", action="store_true",
                   help="take pairs in file order instead of balancing them by the matching answer's letter")
    counterbalance_arg(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", "-o", required=True, help="output .safetensors path")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("generate", help="generate unsteered and steered completions side by side")
    add_model_args(p)
    p.add_argument("prompt", nargs="*", help="prompts (default: one per line on stdin)")
    p.add_argument("--vector", "-v", action="append", help="FILE[:MULTIPLIER], repeatable")
    p.add_argument("--allow-other-model", action="store_true")
    p.add_argument("--actadd", nargs=2, metavar=("POSITIVE", "NEGATIVE"), help="steer with an ActAdd pair")
    p.add_argument("--actadd-layer", type=int, default=6)
    p.add_argument("--actadd-coeff", type=float, default=5.0)
    p.add_argument("--actadd-mode", default="overlay", choices=["overlay", "pad"])
    p.add_argument("--raw", action="store_true", help="raw text instead of the chat template")
    p.add_argument("--system", default=None)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="export a vector as a llama.cpp GGUF control vector")
    p.add_argument("vector")
    p.add_argument("--out", "-o", required=True)
    p.add_argument("--multiplier", type=float, default=1.0, help="bake a scale into the file")
    p.add_argument("--model-hint", default=None, help="controlvector.model_hint (e.g. llama)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="show what a vector file holds")
    p.add_argument("vector")
    p.set_defaults(func=cmd_info)
