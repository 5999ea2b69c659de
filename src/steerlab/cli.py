"""The ``steerlab`` command line: extract, generate, export, info, sweep, reliability, pace, demo."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass


def _parse_layers(text: str) -> list[int]:
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


def _vector_arg(text: str) -> tuple[str, float]:
    path, _, mult = text.partition(":")
    try:
        return path, float(mult) if mult else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FILE[:MULTIPLIER], got {text!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .sources import BUILTIN_MODELS, DEFAULT_MODEL

    names = ", ".join(f"{n} [default]" if n == DEFAULT_MODEL else n for n in BUILTIN_MODELS)
    p.add_argument("--model", default=None, help=f"built-in name ({names}), hub id, model directory or .gguf file")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")


def _load(args):
    from .model import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device)


def cmd_extract(args) -> int:
    from . import datasets
    from .methods import actadd, caa

    lm = _load(args)
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
    from .methods import actadd
    from .vector import SteeringVector

    lm = _load(args)
    steering = []
    for path, mult in args.vector or []:
        vec = SteeringVector.load(path, model=lm, allow_other_model=args.allow_other_model)
        if vec.method == "actadd":
            steering.append(actadd.ActAddSteering(vec, mult, args.actadd_mode))
        else:
            steering.append(vec.interventions(mult))
    if args.actadd:
        pos, neg = args.actadd
        vec = actadd.extract(lm, pos, neg, args.actadd_layer, coeff=args.actadd_coeff, chat=not args.raw)
        steering.append(actadd.ActAddSteering(vec, 1.0, args.actadd_mode))
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    opts = dict(max_new_tokens=args.max_new_tokens, chat=not args.raw, system=args.system, do_sample=args.sample,
                temperature=args.temperature, top_p=args.top_p, frequency_penalty=args.frequency_penalty)
    plain = lm.generate(prompts, seed=args.seed, **opts)
    steered = lm.generate(prompts, steering=steering, seed=args.seed, **opts) if steering else plain
    rows = [{"prompt": p, "unsteered": a, "steered": b} for p, a, b in zip(prompts, plain, steered)]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for r in rows:
            print(f"=== {r['prompt']}\n--- unsteered: {r['unsteered']}\n+++ steered:   {r['steered']}\n")
    return 0


def cmd_export(args) -> int:
    from .gguf_io import export_control_vector
    from .vector import SteeringVector

    vec = SteeringVector.load(args.vector)
    if args.multiplier != 1.0:
        vec = vec * args.multiplier
    path = export_control_vector(vec, args.out, model_hint=args.model_hint)
    print(f"wrote {path} (llama.cpp: --control-vector {path}; layer N of this file = output of block N)")
    return 0


def cmd_info(args) -> int:
    from .vector import SteeringVector

    vec = SteeringVector.load(args.vector)
    info = {k: v for k, v in vec.header().items() if k != "meta"}
    info["norms"] = {str(k): round(n, 4) for k, n in vec.norms().items()}
    info["shapes"] = {str(k): list(t.shape) for k, t in vec.layers.items()}
    info["meta"] = {k: v for k, v in vec.meta.items() if not k.endswith("_ids")}
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def _train_test(args, data=None):
    """The --data set (option texts as answers with --open-answers), split into a training and a test
    part that are balanced by the matching answer's letter unless --no-balance; sizes --train/--test."""
    from . import datasets

    pairs = datasets.load(data or args.data)
    if args.open_answers:
        pairs = datasets.to_open_answers(pairs)
    sizes = dict(n_train=args.train or args.limit or None, n_test=args.test or args.limit or None)
    train, test = datasets.split(pairs, **sizes, balance=not args.no_balance)
    print(f"{data or args.data}: {len(train)} training pairs ({datasets.describe_balance(train)}), "
          f"{len(test)} test pairs ({datasets.describe_balance(test)})", flush=True)
    return train, test


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", type=int, default=0, help="training pairs (default: half of the balanced data)")
    p.add_argument("--test", type=int, default=0, help="test pairs (default: the rest of the balanced data)")
    p.add_argument("--limit", type=int, default=0, help="at most this many train and test pairs each (--train/--test)")
    p.add_argument("--no-balance", action="store_true",
                   help="take items in file order instead of balancing both parts by the matching answer's letter")
    _counterbalance_arg(p)


def _counterbalance_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--counterbalance", action=argparse.BooleanOptionalAction, default=None,
                   help="also read each A/B item with its options swapped so the answer-letter direction cancels "
                        "(default: whenever every item's options can be swapped)")


def _ray_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help=f"run {what} as Ray tasks: on a new local Ray instance, or on the cluster at ADDRESS")
    p.add_argument("--ray-workers", type=int, default=2, help="Ray workers, each loading the model once")
    p.add_argument("--resume", action="store_true",
                   help="keep finished tasks in OUT/.tasks and skip them when the same run is started again")


def _model_spec(args):
    from .distributed import ModelSpec

    return ModelSpec(args.model, dtype=args.dtype, device=args.device)


def cmd_sweep(args) -> int:
    from pathlib import Path

    from .distributed import layer_sweep_tasks
    from .evaluate.sweep import layer_sweep

    lm = _load(args)
    train, test = _train_test(args)
    layers = args.layers or list(range(1, lm.num_layers - 1))
    options = dict(dataset=str(args.data), method=args.method, chat=args.chat, system=args.system,
                   counterbalance=args.counterbalance)
    if args.ray is None and not args.resume:
        result = layer_sweep(lm, train, test, layers, args.multipliers, **options)
    else:
        result = layer_sweep_tasks(lm, train, test, layers, args.multipliers, ray=args.ray, workers=args.ray_workers,
                                   model_spec=_model_spec(args) if args.ray else None,
                                   resume_dir=Path(args.out) / ".tasks" if args.resume else None, **options)
    path = result.save(args.out)
    print(f"unsteered p(matching) = {result.baseline:.3f}\n{result.table()}\n"
          f"recommended layer {result.recommended_layer}: {result.how_chosen}\nwrote {path}")
    return 0


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


def _reliability_task(lm, task: ReliabilityTask):
    from .evaluate.generalisation import generalisation
    from .evaluate.reliability import reliability
    from .methods import caa

    vec = caa.extract(lm, task.train, task.layer, chat=task.chat, counterbalance=task.counterbalance, progress=False)
    report = reliability(lm, vec, task.test, scale=task.scale, dataset=task.dataset, chat=task.chat,
                         letter_pairs=task.train, progress=task.progress)
    gen = generalisation(lm, task.train, task.test, task.layer, dataset=task.dataset, scale=task.scale, chat=task.chat,
                         counterbalance=task.counterbalance, progress=False) if task.generalisation else None
    return report, gen


def cmd_reliability(args) -> int:
    from pathlib import Path

    from .distributed import map_tasks

    lm = _load(args) if args.ray is None else None
    tasks = []
    for data in args.data:
        train, test = _train_test(args, data)
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

    map_tasks(_reliability_task, tasks, model=lm if lm is not None else _model_spec(args), ray=args.ray,
              workers=args.ray_workers, resume_dir=Path(args.out) / ".tasks" if args.resume else None,
              desc="datasets", on_result=report)
    return 0


def cmd_serve(args) -> int:
    import ipaddress
    import os

    try:
        import uvicorn

        from .serve import Limits, create_app, load_vectors
    except ImportError as err:
        raise ValueError(f"steerlab serve needs the serve extra: pip install 'steerlab[serve]' ({err}).") from None
    api_key = args.api_key or os.environ.get("STEERLAB_API_KEY")
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not api_key:
        raise ValueError(f"Binding to {args.host} exposes the server beyond this machine: set --api-key or "
                         "STEERLAB_API_KEY (or bind to 127.0.0.1).")
    lm = _load(args)
    vectors = load_vectors(args.vectors, lm) if args.vectors else {}
    dictionary = None
    if args.dictionary:
        from .pace import ConceptDictionary

        dictionary = ConceptDictionary.load(args.dictionary, lm)
    limits = Limits(max_tokens=args.max_tokens, max_multiplier=args.max_multiplier,
                    allow_control_tokens=args.allow_control_tokens)
    app = create_app(lm, vectors, dictionary=dictionary, api_key=api_key, limits=limits, max_queue=args.max_queue,
                     max_batch=args.max_batch, engine_thread=False)
    # HTTP on a background thread; generation on this (main) thread, where PyTorch runs fastest on CPU.
    import threading

    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    threading.Thread(target=server.run, name="steerlab-http", daemon=True).start()
    print(f"serving {lm.name} with vectors {sorted(vectors) or 'none'} on http://{args.host}:{args.port} "
          f"(playground at /, OpenAI API at /v1); Ctrl-C stops")
    try:
        app.state.engine.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, model=args.model, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerlab", description="Steer language models by editing activations.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract a steering vector (ActAdd or CAA) into a .safetensors file")
    _add_model_args(p)
    p.add_argument("--method", default="caa", choices=["caa", "caa-pca", "caa-probe", "actadd"])
    p.add_argument("--data", help="dataset file (CAA JSON, MWE JSONL, text pairs) or built-in name")
    p.add_argument("--positive", help="ActAdd: the positive prompt, e.g. 'Love'")
    p.add_argument("--negative", help="ActAdd: the negative prompt, e.g. 'Hate'")
    p.add_argument("--coeff", type=float, default=1.0, help="ActAdd coefficient c baked into the vector")
    p.add_argument("--layers", type=_parse_layers, required=True, help="e.g. 12 or 8,12,16 or 6-10")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="render through the chat template (default: on)")
    p.add_argument("--system", default=None, help="system prompt for chat rendering")
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="the training part of a balanced split is used (default 0.5; 1 = all of the data)")
    p.add_argument("--limit", type=int, default=0, help="use at most this many pairs (balanced by letter)")
    p.add_argument("--no-balance", action="store_true",
                   help="take pairs in file order instead of balancing them by the matching answer's letter")
    _counterbalance_arg(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", "-o", required=True, help="output .safetensors path")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("generate", help="generate unsteered and steered completions side by side")
    _add_model_args(p)
    p.add_argument("prompt", nargs="*", help="prompts (default: one per line on stdin)")
    p.add_argument("--vector", "-v", action="append", type=_vector_arg, help="FILE[:MULTIPLIER], repeatable")
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

    p = sub.add_parser("sweep", help="CAA layer x multiplier sweep of p(matching) on held-out pairs, with a plot")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="dataset file or built-in name")
    p.add_argument("--layers", type=_parse_layers, default=None, help="default: every layer but the first and last")
    p.add_argument("--multipliers", type=lambda t: [float(x) for x in t.split(",")], default=[-1.0, 1.0],
                   help="comma-separated; write --multipliers=-8,-2,2,8 (default -1,1)")
    p.add_argument("--method", default="mean", choices=["mean", "pca", "probe"])
    p.add_argument("--open-answers", action="store_true",
                   help="score and extract on the option texts instead of the letters (A)/(B)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--system", default=None)
    _split_args(p)
    p.add_argument("--out", default="steerlab-out/sweep", help="folder for .md, .json and .png")
    _ray_args(p, "blocks of layers")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("reliability", help="per-item steerability, anti-steerable fraction, spurious factors")
    _add_model_args(p)
    p.add_argument("--data", required=True, nargs="+",
                   help="dataset file(s) or built-in name(s); earlier items train, later ones test")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplier unit: slopes are over {-1.5..1.5} x scale (default 1)")
    p.add_argument("--open-answers", action="store_true")
    p.add_argument("--generalisation", action="store_true",
                   help="also train/evaluate on system-prompt and user-prefix variants (heat-map)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True)
    _split_args(p)
    p.add_argument("--out", default="steerlab-out/reliability")
    _ray_args(p, "one task per dataset")
    p.set_defaults(func=cmd_reliability)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with per-request steering, and a playground")
    _add_model_args(p)
    p.add_argument("--vectors", default=None, help="folder of .safetensors/.gguf vectors, served by file name")
    p.add_argument("--dictionary", default=None, help="a PaCE concept dictionary, for 'pace' steering")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set STEERLAB_API_KEY)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond this get HTTP 429")
    p.add_argument("--max-batch", type=int, default=8, help="requests generated together in one batch")
    p.add_argument("--max-tokens", type=int, default=512, help="per-request limit on new tokens")
    p.add_argument("--max-multiplier", type=float, default=50.0, help="per-request limit on |multiplier|")
    p.add_argument("--allow-control-tokens", action="store_true",
                   help="let chat messages spell control tokens such as <|im_start|> (trusted clients only: such "
                        "text becomes real tokens and can forge chat turns; refused with a 400 by default)")
    p.set_defaults(func=cmd_serve)

    from .pace.cli import add_parser as add_pace_parser

    add_pace_parser(sub, _add_model_args, _parse_layers, _ray_args)

    p = sub.add_parser("demo", help="the main job: ActAdd and CAA on the embedded model, with a report")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="steerlab-out/demo", help="report folder (default steerlab-out/demo)")
    p.add_argument("--quick", action="store_true", help="fewer samples (used by the tests)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .datasets import DatasetError
    from .sources import ModelNotFoundError
    from .pace.dictionary import DictionaryFileError
    from .vector import VectorFileError

    try:
        return args.func(args)
    except (DatasetError, ModelNotFoundError, VectorFileError, DictionaryFileError, ValueError,
            FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
