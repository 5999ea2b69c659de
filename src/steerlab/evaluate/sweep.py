"""CAA layer sweep: extract a vector at every layer from the training pairs, then score p(matching)
on held-out pairs at each (layer, multiplier), sharing each item's prompt prefix across all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..datasets import ContrastivePair
from ..methods import caa
from .behavior import Variant, answer_logprobs, p_matching, propensity
from .files import pyplot, save_json_and_plot


@dataclass
class SweepResult:
    model: str
    dataset: str
    layers: list[int]
    multipliers: list[float]
    n_train: int
    n_test: int
    baseline: float  # mean p(matching), unsteered
    p_matching: dict[str, dict[str, float]]  # layer -> multiplier -> mean p(matching)
    propensity: dict[str, dict[str, float]]  # layer -> multiplier -> mean logp(pos) - logp(neg)
    vector_norms: dict[str, float]
    recommended_layer: int
    how_chosen: str = field(default="")

    def effect(self, layer: int) -> float:
        """p(matching) at the largest multiplier minus at the smallest."""
        row = self.p_matching[str(layer)]
        return row[str(max(self.multipliers))] - row[str(min(self.multipliers))]

    def table(self) -> str:
        head = "| layer | norm | " + " | ".join(f"m={m:+g}" for m in self.multipliers) + " | effect |"
        lines = [head, "|" + "---:|" * (len(self.multipliers) + 3)]
        for layer in self.layers:
            row = self.p_matching[str(layer)]
            cells = " | ".join(f"{row[str(m)]:.3f}" for m in self.multipliers)
            lines.append(f"| {layer} | {self.vector_norms[str(layer)]:.2f} | {cells} | {self.effect(layer):+.3f} |")
        return "\n".join(lines)

    def save(self, folder: str | Path, name: str | None = None) -> Path:
        stem = name or f"sweep-{Path(self.dataset).stem}"
        folder = save_json_and_plot(self, folder, stem)
        md = (f"# Layer sweep: {self.dataset} on {self.model}\n\n{self.n_train} training pairs, {self.n_test} test "
              f"pairs; unsteered p(matching) = {self.baseline:.3f}.\n\n{self.table()}\n\n"
              f"Recommended layer: {self.recommended_layer} ({self.how_chosen}).\n\n![sweep]({stem}.png)\n")
        (folder / f"{stem}.md").write_text(md)
        return folder / f"{stem}.md"

    def plot(self, path: Path) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 3.8))
        for m in self.multipliers:
            ax.plot(self.layers, [self.p_matching[str(k)][str(m)] for k in self.layers], marker="o", ms=3,
                    label=f"multiplier {m:+g}")
        ax.axhline(self.baseline, color="grey", ls="--", lw=1, label="unsteered")
        ax.set_xlabel("layer")
        ax.set_ylabel("p(matching behaviour)")
        ax.set_title(f"{Path(self.dataset).stem}: CAA layer sweep ({self.model})", fontsize=10)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _sweep_block(lm, task) -> SweepResult:
    train, test, layers, multipliers, dataset, method, chat, system, progress = task
    vector = caa.extract(lm, train, layers, method=method, chat=chat, system=system, progress=progress)
    variants = [Variant(0.0)] + [Variant(m, k) for k in layers for m in multipliers]
    lp = answer_logprobs(lm, test, vector, variants, chat=chat, system=system, progress=progress)
    pm, prop = p_matching(lp).mean(1), propensity(lp).mean(1)
    table_p: dict[str, dict[str, float]] = {}
    table_prop: dict[str, dict[str, float]] = {}
    for i, v in enumerate(variants[1:], 1):
        table_p.setdefault(str(v.layer), {})[str(v.multiplier)] = float(pm[i])
        table_prop.setdefault(str(v.layer), {})[str(v.multiplier)] = float(prop[i])
    return SweepResult(lm.name, dataset, list(layers), list(multipliers), len(train), len(test), float(pm[0]),
                       table_p, table_prop, {str(k): n for k, n in vector.norms().items()}, layers[0])


def merge_sweeps(parts: Sequence[SweepResult]) -> SweepResult:
    """One sweep from sweeps of disjoint layer blocks (same data and multipliers), recommendation redone."""
    first = parts[0]
    layers = sorted(k for p in parts for k in p.layers)
    merged = SweepResult(first.model, first.dataset, layers, first.multipliers, first.n_train, first.n_test,
                         first.baseline, {k: v for p in parts for k, v in p.p_matching.items()},
                         {k: v for p in parts for k, v in p.propensity.items()},
                         {k: v for p in parts for k, v in p.vector_norms.items()}, layers[0])
    return _recommend(merged)


def _recommend(result: SweepResult) -> SweepResult:
    multipliers, layers = result.multipliers, result.layers

    def monotonic(layer: int) -> bool:
        row = [result.p_matching[str(layer)][str(m)] for m in multipliers]
        return all(a <= b for a, b in zip(row, row[1:])) and row[0] <= result.baseline <= row[-1]

    candidates = [k for k in layers if monotonic(k)]
    best = max(candidates or layers, key=result.effect)
    result.recommended_layer = best
    result.how_chosen = (
        f"largest p(matching) difference between multipliers {max(multipliers):+g} and {min(multipliers):+g} "
        + ("among layers where p(matching) rises monotonically with the multiplier" if candidates
           else "(no layer responds monotonically)") + f": {result.effect(best):+.3f}")
    return result


def layer_sweep(lm, train: Sequence[ContrastivePair], test: Sequence[ContrastivePair], layers: Sequence[int],
                multipliers: Sequence[float] = (-1.0, 1.0), *, dataset: str = "data", method: str = "mean",
                chat: bool = True, system: str | None = None, progress: bool | None = None,
                ray: str | None = None, workers: int = 2, model_spec=None, resume_dir=None) -> SweepResult:
    """p(matching) for every (layer, multiplier). ``ray``: "local" or a cluster address splits the layers
    into blocks that Ray workers run (each loads ``model_spec``, default: ``lm``'s name and dtype)."""
    layers = sorted({lm.check_layer(k) for k in layers})
    multipliers = sorted({float(m) for m in multipliers})
    if ray is None and resume_dir is None:
        return _recommend(_sweep_block(lm, (list(train), list(test), layers, multipliers, dataset, method, chat,
                                            system, progress)))
    from ..distributed import map_tasks

    n_blocks = min(len(layers), 2 * workers) if ray is not None else len(layers)
    blocks = [layers[i::n_blocks] for i in range(n_blocks)]
    tasks = [(list(train), list(test), b, multipliers, dataset, method, chat, system, False) for b in blocks]
    parts = map_tasks(_sweep_block, tasks, model=model_spec or lm, ray=ray,
                      workers=workers, resume_dir=resume_dir, desc="layer blocks")
    return merge_sweeps(parts)
