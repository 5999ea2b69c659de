"""``steerlab pace build | label | eval``: concept dictionaries, partitions and PaCE evaluations."""

from __future__ import annotations

from pathlib import Path

from .args import add_model_args, load_model, model_spec, parse_layers, ray_args


def _partition(args, dictionary):
    from ..pace.partition import EmbeddingPartitioner, Partition, SeedPartitioner

    if getattr(args, "labels", None):
        return Partition.load(args.labels, dictionary, args.task)
    if getattr(args, "seeds", None):
        return SeedPartitioner(args.seeds.split(","), expand=args.expand).partition(dictionary, args.task)
    if getattr(args, "partitioner", "embedding") == "llm":
        from ..pace.llm_partition import LLMPartitioner

        return LLMPartitioner(args.judge, threshold=args.llm_threshold, shortlist=args.shortlist or None
                              ).partition(dictionary, args.task, progress=True)
    return EmbeddingPartitioner(threshold=args.threshold, margin=args.margin).partition(dictionary, args.task)


def cmd_agreement(args) -> int:
    from ..pace.agreement import Agreement, agreement, hand_labels
    from ..pace.llm_partition import EXAMPLES, LLMPartitioner
    from ..pace.partition import EmbeddingPartitioner, get_task

    task = get_task(args.task)
    words = list(hand_labels(task.name))
    emb = EmbeddingPartitioner(threshold=args.threshold, margin=args.margin, cache=False)
    bad, good = emb.scores(words, task)
    emb_labels = dict(zip(words, emb.decide(bad, good).tolist(), strict=True))
    rows = [agreement(emb_labels, task.name, f"embedding (threshold {args.threshold}, margin {args.margin})",
                      scores=dict(zip(words, (bad - good).tolist(), strict=True)))]
    if args.judge:
        judge = LLMPartitioner(args.judge, threshold=args.llm_threshold, batch_size=args.batch_size)
        scores = judge.scores(words, task, progress=True)
        llm_labels = dict(zip(words, (scores > args.llm_threshold).tolist(), strict=True))
        examples = [w for w, _ in EXAMPLES.get(task.name, ())]
        rows.append(agreement(llm_labels, task.name, f"llm {judge.model_name} (threshold {args.llm_threshold})",
                              exclude=examples, scores=dict(zip(words, scores.tolist(), strict=True))))
    print(f"Agreement with the hand labels, task {task.name}:\n{Agreement.HEADER}")
    for r in rows:
        print(r.row())
    return 0


def cmd_build(args) -> int:
    from ..pace.concepts import concept_words
    from ..pace.dictionary import build_dictionary

    lm = load_model(args)
    if args.concept_file:
        concepts = [x.strip() for x in Path(args.concept_file).read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        concepts = concept_words(args.concepts)
    layers = args.layers or [lm.num_layers // 2]
    sentences = None
    if args.stimuli == "model":
        from ..model import load_model as load_writer
        from ..pace.stimuli import model_stimuli

        writer = lm if args.writer == args.model else load_writer(args.writer, dtype=args.dtype, device=args.device)
        if args.ray is None:
            sentences = model_stimuli(writer, concepts, per_concept=args.per_concept, progress=True)
        else:
            from ..distributed import model_stimuli_tasks

            sentences = model_stimuli_tasks(writer, concepts, ray=args.ray, workers=args.ray_workers,
                                            per_concept=args.per_concept)
        usable = sum(1 for c in concepts if sentences.get(c))
        print(f"model-written stimuli: {usable}/{len(concepts)} concepts have usable sentences "
              f"({sum(len(v) for v in sentences.values())} in all); the rest use the templates")
    if args.ray is None and not args.resume:
        d = build_dictionary(lm, concepts, layers, batch_size=args.batch_size, progress=True, sentences=sentences)
    else:
        from ..distributed import build_dictionary_tasks

        d = build_dictionary_tasks(lm, concepts, layers, ray=args.ray, workers=args.ray_workers,
                                   model_spec=model_spec(args) if args.ray else None,
                                   resume_dir=Path(str(args.out) + ".tasks") if args.resume else None,
                                   batch_size=args.batch_size, progress=True, sentences=sentences)
    path = d.save(args.out)
    if args.resume:
        import shutil

        shutil.rmtree(str(args.out) + ".tasks", ignore_errors=True)
    print(f"{len(d)} concepts x layers {d.layers} in {d.meta['build_seconds']} s; wrote {path}")
    for word in args.show:
        if word in d._index:
            print(f"  nearest to {word!r}: {', '.join(n for n, _ in d.neighbours(word, 8))}")
    return 0


def cmd_label(args) -> int:
    from ..pace.dictionary import ConceptDictionary

    d = ConceptDictionary.load(args.dictionary)
    part = _partition(args, d)
    path = part.save(args.out) if args.out else None
    bad = part.undesirable_concepts
    print(f"{part}\n  e.g. {', '.join(bad[:30])}" + (f"\nwrote {path} (edit the label column, then pass "
                                                      f"--labels {path})" if path else ""))
    return 0


def cmd_eval(args) -> int:
    from ..pace.dictionary import ConceptDictionary
    from ..pace.evaluation import evaluate_removal

    lm = load_model(args)
    d = ConceptDictionary.load(args.dictionary, lm)
    part = _partition(args, d)
    prompts = None
    if args.prompts:
        prompts = [x.strip() for x in Path(args.prompts).read_text(encoding="utf-8").splitlines() if x.strip()]
    elif args.limit:
        from ..pace.evaluation import PROMPTS

        prompts = PROMPTS[args.task][: args.limit]
    result = evaluate_removal(lm, d, part, args.layers or d.layers, task=args.task, prompts=prompts,
                              methods=args.methods, max_new_tokens=args.max_new_tokens)
    print(result.table())
    print(f"wrote {result.save(args.out)}")
    return 0


def add_parsers(sub) -> None:
    from ..pace.removal import METHODS

    pace = sub.add_parser("pace", help="PaCE: concept dictionary, partition, removal and its evaluation")
    psub = pace.add_subparsers(dest="pace_command", required=True)

    p = psub.add_parser("build", help="build a concept dictionary (safetensors) from wordfreq words or a file")
    add_model_args(p)
    p.add_argument("--concepts", type=int, default=10000, help="number of frequent English words (default 10000)")
    p.add_argument("--concept-file", default=None, help="one concept per line, instead of wordfreq words")
    p.add_argument("--layers", type=parse_layers, default=None, help="blocks to read (default: the middle one)")
    p.add_argument("--stimuli", choices=["templates", "model"], default="templates",
                   help="stimulus sentences: six project templates (fast) or written by --writer (cached, resumable)")
    p.add_argument("--writer", default="qwen2.5-coder-0.5b", help="--stimuli model: the instruct model that writes")
    p.add_argument("--per-concept", type=int, default=10, help="--stimuli model: sentences asked for per concept")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--show", type=lambda t: t.split(","), default=["love", "war", "money", "dog"],
                   help="print nearest neighbours of these concepts")
    p.add_argument("--out", required=True, help="output .safetensors file")
    ray_args(p, "concept shards")
    p.set_defaults(func=cmd_build)

    def partition_args(p):
        p.add_argument("--task", default="detox", help="detox | positive-sentiment | no-food (built-in anchors)")
        p.add_argument("--threshold", type=float, default=0.5, help="embedding partitioner: min similarity")
        p.add_argument("--margin", type=float, default=0.05, help="embedding partitioner: lead over benign")
        p.add_argument("--seeds", default=None, help="comma-separated undesirable concepts instead")
        p.add_argument("--expand", type=float, default=None, help="with --seeds: also concepts this similar")
        p.add_argument("--labels", default=None, help="a labels TSV (from `pace label --out`) instead")
        p.add_argument("--partitioner", choices=["embedding", "llm"], default="embedding",
                       help="embedding similarity (fast) or asking a local instruct model (--judge)")
        p.add_argument("--judge", default="qwen2.5-coder-0.5b", help="the model --partitioner llm asks")
        p.add_argument("--llm-threshold", type=float, default=0.0,
                       help="--partitioner llm: undesirable when log p(Yes) - log p(No) exceeds this")
        p.add_argument("--shortlist", type=int, default=0,
                       help="--partitioner llm: ask only the N concepts the embedding partitioner ranks most "
                            "undesirable (the rest are desirable); 0 asks every concept")

    p = psub.add_parser("label", help="label the dictionary's concepts benign/undesirable for a task")
    p.add_argument("--dictionary", required=True)
    partition_args(p)
    p.add_argument("--out", default=None, help="write the labels as an editable TSV")
    p.set_defaults(func=cmd_label)

    p = psub.add_parser("agreement", help="how well the partitioners agree with the project's hand labels")
    p.add_argument("--task", default="detox", help="detox | positive-sentiment | no-food")
    p.add_argument("--threshold", type=float, default=0.5, help="embedding partitioner: min similarity")
    p.add_argument("--margin", type=float, default=0.05, help="embedding partitioner: lead over benign")
    p.add_argument("--judge", default="qwen2.5-coder-0.5b",
                   help="also score a language-model partitioner with this model ('' to skip)")
    p.add_argument("--llm-threshold", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_agreement)

    p = psub.add_parser("eval", help="unsteered vs PaCE vs orthogonal projection vs vector subtraction")
    add_model_args(p)
    p.add_argument("--dictionary", required=True)
    partition_args(p)
    p.add_argument("--layers", type=parse_layers, default=None, help="default: every layer of the dictionary")
    p.add_argument("--prompts", default=None, help="one prompt per line (default: the built-in set for --task)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N built-in prompts")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--methods", nargs="+", default=["unsteered", "pace", "orthogonal", "subtraction"],
                   choices=["unsteered", *METHODS],
                   help="what to compare (pace-positive: remove only components the activation leans towards)")
    p.add_argument("--out", default="steerlab-out/pace", help="folder for .md, .json and .png")
    p.set_defaults(func=cmd_eval)

