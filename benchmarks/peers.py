"""steerlab against the libraries users would otherwise pick, side by side in one run (issue 6):

- CAA mean-difference extraction over N pairs vs ``steering-vectors`` (``train_steering_vector``),
  same rendered prompts, same read token, same batch size, one and three layers, plus the cosine
  between the two vectors;
- PCA extraction vs ``repeng`` (``ControlVector.train``, PCA of differences at the last token) with
  steerlab's PCA extractor reading the same token, and |cosine|;
- steered greedy generation tokens/s at batch 1 and 8: unsteered, steerlab, steering-vectors'
  ``apply`` and repeng's ``ControlModel``, each adding one vector at every position of one layer.

The peers are test- and benchmark-only: the `make` set-up installs them with --no-deps.
Run: .venv/bin/python benchmarks/peers.py [--model gemma3-270m] [--pairs 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy
import torch

import steerlab
from steerlab import datasets
from steerlab.intervene import Window
from steerlab.methods import caa

numpy.float_ = numpy.float64  # repeng 0.4 still uses the NumPy 1 alias


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    import repeng
    import steering_vectors as sv

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    lm = steerlab.load_model(args.model)
    n_layers = lm.num_layers
    one, three = [n_layers * 2 // 5], [n_layers // 5, n_layers * 2 // 5, n_layers * 3 // 5]
    pairs = datasets.load(Path(args.shared) / "caa" / "sycophancy_generate.json")[: args.pairs]
    rendered = []
    index = {}
    for p in pairs:
        row = []
        for answer in (p.positive, p.negative):
            r, idx = caa.render_answer(lm, p, answer, chat=True, system=None)
            index[r.text] = idx
            row.append(r.text)
        rendered.append(tuple(row))
    lines = [f"# steerlab vs peers on {lm.name}", "",
             f"{len(pairs)} pairs from caa/sycophancy_generate.json, chat-rendered; batch size {args.batch_size}; "
             f"median of {args.repeats}; torch threads {torch.get_num_threads()}. "
             f"Command: `.venv/bin/python benchmarks/peers.py{' --model ' + args.model if args.model else ''}"
             f" --pairs {args.pairs} --repeats {args.repeats}`.", "",
             "## CAA extraction (mean difference at the answer letter)", "",
             "| layers | steerlab (s) | steering-vectors (s) | speed-up | cosine |", "|---|---:|---:|---:|---:|"]
    for layers in (one, three):
        ours = caa.extract(lm, pairs, layers, batch_size=args.batch_size, progress=False)
        theirs = sv.train_steering_vector(lm.model, lm.tokenizer, rendered, layers=layers,
                                          read_token_index=lambda text: index[text], batch_size=args.batch_size)
        cos = min(float(torch.nn.functional.cosine_similarity(ours.layers[k], theirs.layer_activations[k].float(),
                                                               dim=0)) for k in layers)
        t_ours = _median_time(lambda: caa.extract(lm, pairs, layers, batch_size=args.batch_size, progress=False),
                              args.repeats)
        t_theirs = _median_time(lambda: sv.train_steering_vector(
            lm.model, lm.tokenizer, rendered, layers=layers, read_token_index=lambda text: index[text],
            batch_size=args.batch_size), args.repeats)
        lines.append(f"| {layers} | {t_ours:.2f} | {t_theirs:.2f} | {t_theirs / t_ours:.1f}x | {cos:.5f} |")

    text_pairs = [datasets.ContrastivePair("", a, b) for a, b in rendered]
    entries = [repeng.DatasetEntry(positive=a, negative=b) for a, b in rendered]
    layer = one[0]
    ours = caa.extract(lm, text_pairs, layer, method="pca", chat=False, batch_size=args.batch_size, progress=False)
    theirs = repeng.ControlVector.train(lm.model, lm.tokenizer, entries, hidden_layers=[layer],
                                        batch_size=args.batch_size)
    cos = abs(float(torch.nn.functional.cosine_similarity(ours.layers[layer], torch.tensor(
        theirs.directions[layer]).float(), dim=0)))
    t_ours = _median_time(lambda: caa.extract(lm, text_pairs, layer, method="pca", chat=False,
                                              batch_size=args.batch_size, progress=False), args.repeats)
    t_theirs = _median_time(lambda: repeng.ControlVector.train(lm.model, lm.tokenizer, entries, hidden_layers=[layer],
                                                               batch_size=args.batch_size), args.repeats)
    lines += ["", "## PCA extraction (last token)", "", "| layer | steerlab (s) | repeng (s) | speed-up | abs cosine |",
              "|---|---:|---:|---:|---:|", f"| {layer} | {t_ours:.2f} | {t_theirs:.2f} | {t_theirs / t_ours:.1f}x | "
              f"{cos:.4f} |"]

    vec = caa.extract(lm, pairs[:64], layer, progress=False)
    direction = vec.layers[layer]
    sv_vec = sv.SteeringVector({layer: direction}, "decoder_block")
    prompts_all = ["Tell me about your weekend.", "Describe the town where you live.", "What is a good breakfast?",
                   "Write a sentence about the sea.", "How do plants grow?", "Name three colours.",
                   "What is your favourite book?", "Explain rain to a child."]
    new_tokens, mult = 32, 4.0
    lines += ["", f"## Steered greedy generation ({new_tokens} new tokens, one vector at block {layer}, every "
              "position, multiplier 4)", "", "| batch | unsteered tok/s | steerlab | steering-vectors | repeng | "
              "steerlab premium |", "|---:|---:|---:|---:|---:|---:|"]
    for batch in (1, 8):
        prompts = prompts_all[:batch]
        enc = lm.prepare(prompts)
        kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
                      temperature=None, top_p=None, top_k=None, min_new_tokens=new_tokens)

        def plain():
            lm.model.generate(**enc.model_inputs(), **kwargs)

        def ours_run():
            with lm.steer(vec.interventions(mult, Window.all()), batch=enc):
                lm.model.generate(**enc.model_inputs(), **kwargs)

        def sv_run():
            with sv_vec.apply(lm.model, multiplier=mult):
                lm.model.generate(**enc.model_inputs(), **kwargs)

        plain(), ours_run(), sv_run()
        times = {"plain": [], "ours": [], "sv": []}
        for _ in range(args.repeats):
            for name, fn in (("plain", plain), ("ours", ours_run), ("sv", sv_run)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        control = repeng.ControlModel(lm.model, [layer])
        control.set_control(repeng.ControlVector(lm.model.config.model_type, {layer: direction.numpy()}), mult)
        try:
            control.generate(**enc.model_inputs(), **kwargs)
            t_rep = _median_time(lambda: control.generate(**enc.model_inputs(), **kwargs), args.repeats)
        finally:
            control.unwrap()
        tok = new_tokens * batch
        med = {k: statistics.median(v) for k, v in times.items()}
        lines.append(f"| {batch} | {tok / med['plain']:.1f} | {tok / med['ours']:.1f} | {tok / med['sv']:.1f} | "
                     f"{tok / t_rep:.1f} | {med['ours'] / med['plain'] - 1:+.1%} |")
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"peers-{lm.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
