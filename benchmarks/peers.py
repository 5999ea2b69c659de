"""steerlab against the libraries users would otherwise pick, side by side in one run:

- CAA mean-difference extraction over N pairs vs ``steering-vectors`` (``train_steering_vector``),
  same rendered prompts, same read token, same batch size, one and three layers, plus the cosine
  between the two vectors;
- PCA extraction vs ``repeng`` (``ControlVector.train``, PCA of differences at the last token) with
  steerlab's PCA extractor reading the same token, and |cosine|;
- steered greedy generation tokens/s at batch 1 and 8: unsteered, steerlab, steering-vectors'
  ``apply`` and repeng's ``ControlModel``, each adding one vector at every position of one layer.
  The four are interleaved within every repeat (in a rotating order), so drift in the machine's
  speed hits all of them alike.

Every library gets one untimed warm-up call on a few pairs before its timed calls. The peers are
test- and benchmark-only: the `make` set-up installs them with --no-deps.
Run: .venv/bin/python benchmarks/peers.py [--model gemma3-270m] [--pairs 208] [--repeats 1] [--gen-repeats 7]
Writes benchmarks/results/peers-<model>.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy
import torch
from common import paired_change, save_report, timed

import steerlab
from steerlab import datasets
from steerlab.intervene import Window
from steerlab.methods import caa

numpy.float_ = numpy.float64  # repeng 0.4 still uses the NumPy 1 alias

PROMPTS = ["Tell me about your weekend.", "Describe the town where you live.", "What is a good breakfast?",
           "Write a sentence about the sea.", "How do plants grow?", "Name three colours.",
           "What is your favourite book?", "Explain rain to a child."]


def _cos(a: torch.Tensor, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), torch.as_tensor(b).float(), dim=0))


def bench_extraction(lm, pairs, layers_list, batch_size: int, repeats: int) -> tuple[list[dict], dict]:
    import repeng
    import steering_vectors as sv

    rendered, index = [], {}
    for p in pairs:
        row = []
        for answer in (p.positive, p.negative):
            r, idx = caa.render_answer(lm, p, answer, chat=True, system=None)
            index[r.text] = idx
            row.append(r.text)
        rendered.append(tuple(row))

    def ours(layers, n=None):
        # The peers compute the plain mean difference: compare like with like (no second, swapped reading).
        return caa.extract(lm, pairs[:n], layers, batch_size=batch_size, counterbalance=False, measure_letter=False,
                           progress=False)

    def theirs(layers, n=None):
        return sv.train_steering_vector(lm.model, lm.tokenizer, rendered[:n], layers=layers,
                                        read_token_index=lambda text: index[text], batch_size=batch_size,
                                        show_progress=False)

    rows = []
    for layers in layers_list:
        ours(layers, batch_size), theirs(layers, batch_size)  # warm-up
        t_ours = [timed(lambda layers=layers: ours(layers)) for _ in range(repeats)]
        t_theirs = [timed(lambda layers=layers: theirs(layers)) for _ in range(repeats)]
        a, b = t_ours[-1][1], t_theirs[-1][1]
        cos = min(_cos(a.layers[k], b.layer_activations[k]) for k in layers)
        s_ours, s_theirs = statistics.median(t for t, _ in t_ours), statistics.median(t for t, _ in t_theirs)
        rows.append({"layers": layers, "steerlab_s": s_ours, "steering_vectors_s": s_theirs,
                     "speedup": s_theirs / s_ours, "cosine": cos})

    text_pairs = [datasets.ContrastivePair("", a, b) for a, b in rendered]
    entries = [repeng.DatasetEntry(positive=a, negative=b) for a, b in rendered]
    layer = layers_list[0][0]

    def ours_pca(n=None):
        return caa.extract(lm, text_pairs[:n], layer, method="pca", chat=False, batch_size=batch_size,
                           progress=False)

    def theirs_pca(n=None):
        return repeng.ControlVector.train(lm.model, lm.tokenizer, entries[:n], hidden_layers=[layer],
                                          batch_size=batch_size)

    ours_pca(batch_size), theirs_pca(batch_size)
    t_ours = [timed(ours_pca) for _ in range(repeats)]
    t_theirs = [timed(theirs_pca) for _ in range(repeats)]
    s_ours, s_theirs = statistics.median(t for t, _ in t_ours), statistics.median(t for t, _ in t_theirs)
    pca = {"layer": layer, "steerlab_s": s_ours, "repeng_s": s_theirs, "speedup": s_theirs / s_ours,
           "abs_cosine": abs(_cos(t_ours[-1][1].layers[layer], t_theirs[-1][1].directions[layer]))}
    return rows, pca


def bench_generation(lm, pairs, layer: int, batch: int, repeats: int, new_tokens: int, mult: float) -> dict:
    import repeng
    import steering_vectors as sv

    direction = caa.extract(lm, pairs[:64], layer, progress=False).layers[layer]
    ours_vec = steerlab.SteeringVector({layer: direction}, model_name=lm.name, hidden_size=lm.hidden_size)
    sv_vec = sv.SteeringVector({layer: direction}, "decoder_block")
    rep_vec = repeng.ControlVector(lm.model.config.model_type, {layer: direction.numpy()})
    enc = lm.prepare(PROMPTS[:batch])
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, pad_token_id=lm.tokenizer.pad_token_id)

    def plain():
        return lm.model.generate(**enc.model_inputs(), **kwargs)

    def steerlab_run():
        with lm.steer(ours_vec.interventions(mult, Window.all()), batch=enc):
            return lm.model.generate(**enc.model_inputs(), **kwargs)

    def sv_run():
        with sv_vec.apply(lm.model, multiplier=mult):
            return lm.model.generate(**enc.model_inputs(), **kwargs)

    def repeng_run():  # wrapping the layers is set-up, like entering the others' context managers
        control = repeng.ControlModel(lm.model, [layer])
        control.set_control(rep_vec, mult)
        try:
            return control.generate(**enc.model_inputs(), **kwargs)
        finally:
            control.unwrap()

    runs = {"unsteered": plain, "steerlab": steerlab_run, "steering-vectors": sv_run, "repeng": repeng_run}
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up, and the texts must agree (below)
    same = torch.equal(outputs["steerlab"], outputs["steering-vectors"]) and torch.equal(
        outputs["steerlab"], outputs["repeng"])
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % 4:] + names[:r % 4]:
            times[name].append(timed(runs[name])[0])
    tokens = new_tokens * batch
    tok_s = {name: tokens / statistics.median(t) for name, t in times.items()}
    return {"batch": batch, "new_tokens": new_tokens, "repeats": repeats, "multiplier": mult,
            "times_s": times, "tok_per_s": tok_s, "same_tokens_as_peers": same,
            "premium": tok_s["unsteered"] / tok_s["steerlab"] - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="built-in model name (default: the embedded SmolLM2)")
    parser.add_argument("--pairs", type=int, default=208)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="timed extraction calls per library")
    parser.add_argument("--gen-repeats", type=int, default=7, help="interleaved generation repeats")
    parser.add_argument("--parts", nargs="+", choices=("extraction", "generation"),
                        default=["extraction", "generation"])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    lm = steerlab.load_model(args.model)
    n = lm.num_layers
    one, three = [n * 2 // 5], [n // 5, n * 2 // 5, n * 3 // 5]
    pairs = datasets.load(Path(args.shared) / "caa" / "sycophancy_generate.json")[: args.pairs]
    lines = [f"# steerlab vs peers on {lm.name}", "",
             f"{len(pairs)} pairs from caa/sycophancy_generate.json, chat-rendered; batch size {args.batch_size}."]
    data: dict = {"model": lm.name, "pairs": len(pairs), "batch_size": args.batch_size}
    if "extraction" in args.parts:
        rows, pca = bench_extraction(lm, pairs, [one, three], args.batch_size, args.repeats)
        data.update(extraction=rows, pca=pca)
        lines += ["", f"## CAA extraction (mean difference at the answer letter; median of {args.repeats})", "",
                  "| layers | steerlab (s) | steering-vectors (s) | speed-up | cosine |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['layers']} | {r['steerlab_s']:.2f} | {r['steering_vectors_s']:.2f} | {r['speedup']:.1f}x "
                  f"| {r['cosine']:.5f} |" for r in rows]
        lines += ["", f"## PCA extraction (last token; median of {args.repeats})", "",
                  "| layer | steerlab (s) | repeng (s) | speed-up | abs cosine |", "|---|---:|---:|---:|---:|",
                  f"| {pca['layer']} | {pca['steerlab_s']:.2f} | {pca['repeng_s']:.2f} | {pca['speedup']:.1f}x | "
                  f"{pca['abs_cosine']:.4f} |"]
    if "generation" in args.parts:
        gen = [bench_generation(lm, pairs, one[0], b, args.gen_repeats, 32, 4.0) for b in (1, 8)]
        data["generation"] = gen
        lines += ["", f"## Steered greedy generation (32 new tokens, one vector at block {one[0]}, every position, "
                  f"multiplier 4; {args.gen_repeats} interleaved repeats, median tok/s)", "",
                  "| batch | unsteered | steerlab | steering-vectors | repeng | steerlab vs unsteered | "
                  "vs steering-vectors | vs repeng | same tokens |", "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for g in gen:
            t = g["tok_per_s"]
            lines.append(f"| {g['batch']} | {t['unsteered']:.1f} | {t['steerlab']:.1f} | {t['steering-vectors']:.1f} "
                         f"| {t['repeng']:.1f} | {t['steerlab'] / t['unsteered'] - 1:+.1%} | "
                         f"{t['steerlab'] / t['steering-vectors'] - 1:+.1%} | {t['steerlab'] / t['repeng'] - 1:+.1%} "
                         f"| {'yes' if g['same_tokens_as_peers'] else 'NO'} |")
        lines += ["", "Columns 'vs ...' are steerlab's tok/s relative to the other (positive = steerlab faster).", "",
                  "Paired per repeat (steerlab's time / the other's time in the same repeat - 1; median [min, max]; "
                  "negative = steerlab faster):", ""]
        for g in gen:
            t = g["times_s"]
            cells = [f"{peer} {m:+.1%} [{lo:+.1%}, {hi:+.1%}]" for peer in ("unsteered", "steering-vectors", "repeng")
                     for m, lo, hi in [paired_change(t["steerlab"], t[peer])]]
            lines.append(f"- batch {g['batch']}: " + "; ".join(cells))
    save_report(f"peers-{lm.name}", lines, data)


if __name__ == "__main__":
    main()
