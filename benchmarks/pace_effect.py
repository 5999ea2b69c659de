"""Can PaCE's effect be seen? Removing negative sentiment, or a whole topic, on a model that clearly
expresses it.

The 48 built-in positive-sentiment prompts ask for things that go wrong (a failed exam, a flooded
house); the unsteered model answers them in a negative tone. Methods, all at one block: PaCE as
stated, PaCE removing only the components the activation leans towards, orthogonal projection onto
the complement of the undesirable atoms, subtraction of their mean direction, and CAA with the
built-in sentiment vector (read on the option texts) at several multipliers, so that one of them
sits near PaCE's fluency. Scores per prompt: VADER compound (higher = more positive), the rate of
words the partition labels undesirable, and fluency (perplexity of the output under the unsteered
model, and the share of repeated token 2-grams, which perplexity misses); 95% bootstrap intervals
over prompts, and paired changes from the unsteered outputs.

``--task no-food`` measures concept removal directly: 48 prompts that ask about food, the food
concepts of the dictionary marked undesirable, and as scores the share of food words in the output
and a topic score from sentence embeddings (independent of the steered model); no CAA rows there.

``--task detox``: the 48 built-in prompts ask for angry or insulting text, which an instruct model
mostly refuses; the table's refusal column counts the outputs that decline, since a method that turns
refusals into answers can raise toxicity while removing toxic concepts. ``--generated-only``
adds a PaCE row that edits only the generated tokens, leaving the prompt as the model read it.

Run: .venv/bin/python benchmarks/pace_effect.py [--model qwen2.5-coder-1.5b] [--concepts 3000] [--task no-food]
Writes benchmarks/results/pace-effect-<model>[-<task>].md/.json/.png; the dictionary is kept in steerlab-out/bench/.
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS, ROOT, save_report

import steerlab
from steerlab import Scaled, Window, datasets
from steerlab.methods import caa
from steerlab.pace import ConceptDictionary, EmbeddingPartitioner, build_dictionary, concept_words
from steerlab.pace.evaluation import PROMPTS, evaluate_removal
from steerlab.pace.removal import PaCE, VectorSubtraction


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--task", default="positive-sentiment", choices=["positive-sentiment", "no-food", "detox"])
    parser.add_argument("--layer", type=int, default=None, help="default: the middle block")
    parser.add_argument("--layers", default="", help="several blocks, e.g. 10,15,20 (PaCE and the baselines at each; "
                                                     "CAA stays at the first)")
    parser.add_argument("--concepts", type=int, default=3000)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--caa", default="2,4,8", help="CAA multipliers ('' for none)")
    parser.add_argument("--subtraction-scales", default="",
                        help="more subtraction rows at these scales of the norm (e.g. 0.05,0.03, to match fluency)")
    parser.add_argument("--generated-only", action="store_true",
                        help="add a row: PaCE on the generated tokens only (the prompt left unedited)")
    parser.add_argument("--methods", nargs="+", default=["unsteered", "pace", "pace-positive", "orthogonal",
                                                          "subtraction"])
    args = parser.parse_args()

    lm = steerlab.load_model(args.model)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else [
        lm.num_layers // 2 if args.layer is None else args.layer]
    layer = layers[0]
    tag = "-".join(str(x) for x in layers)
    path = ROOT / "steerlab-out" / "bench" / f"{args.model}-{args.concepts}-L{tag}.safetensors"
    t0 = time.perf_counter()
    if path.exists():
        dictionary = ConceptDictionary.load(path, lm)
    else:
        dictionary = build_dictionary(lm, concept_words(args.concepts), layers, batch_size=64, progress=True)
        dictionary.save(path)
    build_s = time.perf_counter() - t0
    partition = EmbeddingPartitioner().partition(dictionary, args.task)
    steerings: dict[str, object] = {}
    if args.task == "positive-sentiment" and args.caa:
        train, _ = datasets.split(datasets.to_open_answers(datasets.builtin("sentiment")))
        vector = caa.extract(lm, train, layer)
        steerings = {f"CAA sentiment x{m:g}": Scaled(vector, m) for m in (float(x) for x in args.caa.split(","))}
    for scale in (float(x) for x in args.subtraction_scales.split(",") if x):
        steerings[f"subtraction {scale:g} x norm"] = VectorSubtraction(dictionary, partition, layers, scale=scale)
    if args.generated_only:
        steerings["pace, generated tokens only"] = PaCE(dictionary, partition, layers, window=Window.generated())
    result = evaluate_removal(lm, dictionary, partition, layers, task=args.task,
                              prompts=PROMPTS[args.task][: args.prompts],
                              methods=args.methods,
                              max_new_tokens=args.max_new_tokens, steerings=steerings)
    stem = (f"pace-effect-{args.model}" + ("" if args.task == "positive-sentiment" else f"-{args.task}")
            + (f"-L{tag}" if len(layers) > 1 else ""))
    result.plot(RESULTS / f"{stem}.png")
    source = f"read from {path.name}" if build_s < 5 else f"built in {build_s:.0f} s"
    lines = [f"# {result.title()}", "",
             f"{args.prompts} prompts, greedy, {args.max_new_tokens} new tokens; dictionary: {len(dictionary)} "
             f"wordfreq concepts, template stimuli, block(s) {tag} ({source}); embedding partitioner: "
             f"{int(partition.undesirable.sum())} undesirable.", "", result.table(), "",
             "Example outputs (first prompt):", ""]
    lines += [f"- **{r.method}**: {r.texts[0][:300]!r}" for r in result.results]
    save_report(stem, lines, {"model": lm.name, "task": args.task, "layers": layers, "concepts": len(dictionary),
                              "undesirable": int(partition.undesirable.sum()),
                              "undesirable_concepts": partition.undesirable_concepts, "dictionary_seconds": build_s,
                              "results": [{k: v for k, v in vars(r).items() if k != "texts"} | {"texts": r.texts}
                                          for r in result.results]})


if __name__ == "__main__":
    main()
