"""The main job (``steerlab demo``): ActAdd and CAA on the embedded model, side-by-side
generations, VADER sentiment of every completion, and a markdown report with a PNG."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import mean, stdev
from typing import TYPE_CHECKING, Any

from .evaluate.text_scores import vader_scores
from .steering import Scaled

if TYPE_CHECKING:
    from .model import SteerModel

NEUTRAL_PROMPTS = [
    "I went up to my friend and said",
    "Tell me about your weekend.",
    "Describe the town where you live.",
    "What do you think about Mondays?",
    "Write a sentence about the weather today.",
    "How was the meeting this morning?",
]
# Chosen on SmolLM2-135M (docs/RESULTS.md): the CAA sentiment vector is read on the option *texts*
# of the built-in A/B items (datasets.to_open_answers); at block 8 its norm is ~8 against a median
# residual norm of ~130, so multipliers up to +-4 move the stream by up to ~25%. Larger multipliers
# or later layers degrade the text in both directions.
CAA_LAYER = 8
CAA_MULTIPLIERS = (-4.0, -2.0, 0.0, 2.0, 4.0)
ACTADD: dict[str, Any] = dict(positive="Love", negative="Hate", layer=10, coeff=5.0)
SAMPLING: dict[str, Any] = dict(do_sample=True, temperature=1.0, top_p=0.3, frequency_penalty=1.0, max_new_tokens=40)


def _summary(xs: list[float]) -> tuple[float, float]:
    return mean(xs), (stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0)


def run_demo(out: str | Path, *, model: str | None = None, quick: bool = False) -> Path:
    from . import datasets
    from .capture import capture
    from .methods import actadd, caa
    from .model import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[demo] loading model {model or 'smollm2-135m (embedded)'} ...", flush=True)
    lm = load_model(model)
    repeats = 1 if quick else 5
    prompts = [p for p in NEUTRAL_PROMPTS for _ in range(repeats)]
    results: dict[str, dict] = {}

    print("[demo] ActAdd: Love - Hate ...", flush=True)
    layer = min(ACTADD["layer"], lm.num_layers - 1)
    vec_aa = actadd.extract(lm, ACTADD["positive"], ACTADD["negative"], layer, coeff=ACTADD["coeff"], chat=True)
    vec_aa.save(out / "actadd_love_hate.safetensors")
    aa = actadd.ActAddSteering(vec_aa)
    plain = lm.generate(prompts, seed=0, **SAMPLING)
    steered = lm.generate(prompts, steering=aa, seed=0, **SAMPLING)
    results["ActAdd unsteered"] = {"texts": plain, "scores": vader_scores(plain)}
    results["ActAdd Love-Hate"] = {"texts": steered, "scores": vader_scores(steered)}

    print("[demo] CAA: sentiment vector from the built-in set ...", flush=True)
    train, _ = datasets.split(datasets.to_open_answers(datasets.builtin("sentiment")))
    if quick:
        train = train[:24]
    caa_layer = min(CAA_LAYER, lm.num_layers - 1)
    vec_caa = caa.extract(lm, train, caa_layer)
    vec_caa.save(out / "caa_sentiment.safetensors")
    resid = capture(lm, [lm.render(p).text for p in NEUTRAL_PROMPTS], caa_layer, positions="all")[caa_layer]
    resid_norm = float(resid.norm(dim=-1).median())
    caa_rows = {}
    for m in CAA_MULTIPLIERS:
        texts = lm.generate(prompts, steering=Scaled(vec_caa, m), seed=0, **SAMPLING)
        caa_rows[m] = texts
        results[f"CAA x{m:+g}"] = {"texts": texts, "scores": vader_scores(texts)}

    _plot(results, out / "sentiment.png")
    report = _report(lm, results, prompts, vec_aa, vec_caa, caa_layer, resid_norm, time.time() - t0, quick)
    (out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    print(f"[demo] report: {out / 'report.md'} (plot: {out / 'sentiment.png'})")
    return out / "report.md"


def _plot(results: dict, path: Path) -> None:
    from .evaluate.files import pyplot

    plt = pyplot()
    names = list(results)
    stats = [_summary(results[n]["scores"]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = ["#999999", "#d95f02"] + ["#1b9e77"] * (len(names) - 2)
    ax.bar(range(len(names)), [s[0] for s in stats], yerr=[s[1] for s in stats], color=colors, capsize=3)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("mean VADER compound (± s.e.)")
    ax.set_title("Sentiment of completions of neutral prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _report(lm: SteerModel, results, prompts, vec_aa, vec_caa, caa_layer, resid_norm, seconds, quick) -> str:
    lines = [
        "# steerlab demo report", "",
        f"Model: `{lm.name}` ({lm.num_layers} blocks, d={lm.hidden_size}). {len(prompts)} sampled completions per "
        f"condition (temperature 1, top-p 0.3, frequency penalty 1, 40 new tokens, seed 0). Run time {seconds:.0f} s"
        + (" (quick mode)." if quick else "."), "",
        "## Mean VADER sentiment", "", "| condition | mean | s.e. | n |", "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        m, se = _summary(r["scores"])
        lines.append(f"| {name} | {m:+.3f} | {se:.3f} | {len(r['scores'])} |")
    n_aa = vec_aa.meta["n_positions"]
    lines += [
        "", "![sentiment](sentiment.png)", "",
        f"- ActAdd: `Love` - `Hate`, read at the input of block {next(iter(vec_aa.layers))}, c = "
        f"{vec_aa.meta['coeff']}, injected on the first {n_aa} prompt positions (chat-rendered; the shared "
        f"template prefix of {vec_aa.meta['shared_prefix']} tokens gets zero).",
        f"- CAA: mean difference over {vec_caa.meta['n_pairs']} built-in sentiment pairs (option texts as answers, "
        f"read at their last token) at the output of block "
        f"{caa_layer}; vector norm {vec_caa.norms()[caa_layer]:.2f} vs median residual norm {resid_norm:.1f} at that "
        "layer.", "",
        "## Side by side (first sample of each prompt)", "",
        "| prompt | unsteered | ActAdd Love-Hate | CAA +max |", "|---|---|---|---|",
    ]
    caa_top = f"CAA x{max(CAA_MULTIPLIERS):+g}"
    step = len(prompts) // len(NEUTRAL_PROMPTS)
    for i in range(0, len(prompts), step):
        cells = [prompts[i]] + [results[k]["texts"][i] for k in ("ActAdd unsteered", "ActAdd Love-Hate", caa_top)]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)
