"""CAA layer sweep: extract a vector at every layer from the training pairs, then score p(matching)
on held-out pairs at each (layer, multiplier), sharing each item's prompt prefix across all of them.

Each layer also gets a null: a random direction of that layer's vector norm, scored at the smallest
and largest multiplier. A layer *beats the null* when its per-item effect (p(matching) at the largest
minus at the smallest multiplier) exceeds the null's by more than twice the standard error of the
mean paired difference; only such layers are recommended."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..datasets import ContrastivePair, describe_balance
from ..methods import caa
from .behaviour import Variant, answer_logprobs, p_matching, propensity
from .files import Report, pyplot
from .stats import null_vector

if TYPE_CHECKING:
    from ..methods.caa import Method
    from ..model import SteerModel


@dataclass
class SweepResult(Report):
    default_stem = "sweep"  # files: sweep-<dataset file stem>.md/.json/.png

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
    null_effect: dict[str, float] = field(default_factory=dict)  # layer -> effect of a random direction
    effect_vs_null_se: dict[str, float] = field(default_factory=dict)  # s.e. of the mean paired difference
    train_balance: str = ""
    test_balance: str = ""
    counterbalanced: bool | None = None

    def beats_null(self, layer: int) -> bool | None:
        """Effect above the null's by more than two standard errors (None without a null)."""
        key = str(layer)
        if key not in self.null_effect:
            return None
        return self.effect(layer) - self.null_effect[key] > 2 * self.effect_vs_null_se[key]

    def effect(self, layer: int) -> float:
        """p(matching) at the largest multiplier minus at the smallest."""
        row = self.p_matching[str(layer)]
        return row[str(max(self.multipliers))] - row[str(min(self.multipliers))]

    def table(self) -> str:
        head = ("| layer | norm | " + " | ".join(f"m={m:+g}" for m in self.multipliers)
                + " | effect | null effect | beats null |")
        lines = [head, "|" + "---:|" * (len(self.multipliers) + 5)]
        for layer in self.layers:
            row = self.p_matching[str(layer)]
            cells = " | ".join(f"{row[str(m)]:.3f}" for m in self.multipliers)
            beats = self.beats_null(layer)
            null = (f"{self.null_effect[str(layer)]:+.3f} (s.e. {self.effect_vs_null_se[str(layer)]:.3f})"
                    if beats is not None else "-")
            verdict = "-" if beats is None else ("yes" if beats else "no")
            lines.append(f"| {layer} | {self.vector_norms[str(layer)]:.2f} | {cells} | {self.effect(layer):+.3f} | "
                         f"{null} | {verdict} |")
        return "\n".join(lines)

    def title(self) -> str:
        return f"Layer sweep: {self.dataset} on {self.model}"

    def intro(self) -> str:
        return (f"{self.n_train} training pairs ({self.train_balance or 'n/a'}), {self.n_test} test pairs "
                f"({self.test_balance or 'n/a'}); counterbalanced: {self.counterbalanced}; unsteered "
                f"p(matching) = {self.baseline:.3f}. Recommended layer: {self.recommended_layer} "
                f"({self.how_chosen}).")

    def plot(self, path: str | Path | BinaryIO) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 3.8))
        colours = plt.get_cmap("viridis")
        sizes = sorted({abs(m) for m in self.multipliers})
        for m in self.multipliers:
            # +m and -m share a colour: solid for +, dashed for -.
            colour = colours(0.15 + 0.7 * sizes.index(abs(m)) / max(1, len(sizes) - 1))
            ax.plot(self.layers, [self.p_matching[str(k)][str(m)] for k in self.layers], marker="o", ms=3,
                    color=colour, ls="-" if m >= 0 else "--", label=f"multiplier {m:+g}")
        ax.axhline(self.baseline, color="grey", ls=":", lw=1, label="unsteered")
        if self.null_effect:
            ax.plot(self.layers, [self.baseline + self.null_effect[str(k)] for k in self.layers], color="grey",
                    lw=0.8, marker="x", ms=3, label="unsteered + null effect (random direction)")
        beaten = any(self.beats_null(k) for k in self.layers)
        ax.axvline(self.recommended_layer, color="#e7298a", lw=1, ls="-." if beaten else ":",
                   label=f"recommended: layer {self.recommended_layer}" if beaten or not self.null_effect
                   else f"largest effect, layer {self.recommended_layer} (no layer beats the null)")
        ax.set_xlabel("layer")
        ax.set_ylabel("p(matching behaviour)")
        ax.set_title(f"{Path(self.dataset).stem}: CAA layer sweep ({self.model})", fontsize=10)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


@dataclass(frozen=True)
class SweepTask:
    """One block of layers to sweep (what a Ray worker receives)."""

    train: list[ContrastivePair]
    test: list[ContrastivePair]
    layers: list[int]
    multipliers: list[float]
    dataset: str = "data"
    method: Method = "mean"
    chat: bool = True
    system: str | None = None
    counterbalance: bool | None = None
    null: bool = True
    progress: bool | None = None

    @classmethod
    def of(cls, lm: SteerModel, train: Sequence[ContrastivePair], test: Sequence[ContrastivePair],
           layers: Sequence[int], multipliers: Sequence[float], **options) -> SweepTask:
        """A task over ``lm``'s checked layers and the sorted, distinct multipliers."""
        return cls(list(train), list(test), lm.check_layers(layers), sorted({float(m) for m in multipliers}),
                   **options)


def _sweep_block(lm: SteerModel, task: SweepTask) -> SweepResult:
    vector = caa.extract(lm, task.train, task.layers, method=task.method, chat=task.chat, system=task.system,
                         counterbalance=task.counterbalance, measure_letter=False, progress=task.progress)
    lo, hi = min(task.multipliers), max(task.multipliers)
    nulls = {k: null_vector(vector, k, seed=k) for k in task.layers} if task.null and lo != hi else {}
    variants = [Variant(0.0)] + [Variant(m, k) for k in task.layers for m in task.multipliers]
    variants += [Variant(m, k, nulls[k]) for k in nulls for m in (lo, hi)]
    lp = answer_logprobs(lm, task.test, vector, variants, chat=task.chat, system=task.system, progress=task.progress)
    per_item = p_matching(lp)  # [V, N]
    pm, prop = per_item.mean(1), propensity(lp).mean(1)
    table_p: dict[str, dict[str, float]] = {}
    table_prop: dict[str, dict[str, float]] = {}
    rows: dict[tuple[int, float, bool], int] = {}
    for i, v in enumerate(variants[1:], 1):
        is_null = v.vector is not None
        assert v.layer is not None  # every variant after the baseline steers one layer
        rows[(v.layer, v.multiplier, is_null)] = i
        if not is_null:
            table_p.setdefault(str(v.layer), {})[str(v.multiplier)] = float(pm[i])
            table_prop.setdefault(str(v.layer), {})[str(v.multiplier)] = float(prop[i])
    null_effect, se = {}, {}
    n = per_item.shape[1]
    for k in nulls:
        real = per_item[rows[(k, hi, False)]] - per_item[rows[(k, lo, False)]]
        rand = per_item[rows[(k, hi, True)]] - per_item[rows[(k, lo, True)]]
        null_effect[str(k)] = float(rand.mean())
        se[str(k)] = float((real - rand).std() / n ** 0.5) if n > 1 else float("inf")
    return SweepResult(lm.name, task.dataset, list(task.layers), list(task.multipliers), len(task.train),
                       len(task.test), float(pm[0]), table_p, table_prop,
                       {str(k): n for k, n in vector.norms().items()}, task.layers[0], "", null_effect, se,
                       describe_balance(task.train), describe_balance(task.test), vector.meta.get("counterbalanced"))


def merge_sweeps(parts: Sequence[SweepResult]) -> SweepResult:
    """One sweep from sweeps of disjoint layer blocks (same data and multipliers), recommendation redone."""
    first = parts[0]
    layers = sorted(k for p in parts for k in p.layers)
    merged = replace(first, layers=layers, p_matching={k: v for p in parts for k, v in p.p_matching.items()},
                     propensity={k: v for p in parts for k, v in p.propensity.items()},
                     vector_norms={k: v for p in parts for k, v in p.vector_norms.items()},
                     null_effect={k: v for p in parts for k, v in p.null_effect.items()},
                     effect_vs_null_se={k: v for p in parts for k, v in p.effect_vs_null_se.items()})
    return _recommend(merged)


def _recommend(result: SweepResult) -> SweepResult:
    multipliers, layers = result.multipliers, result.layers

    def monotonic(layer: int) -> bool:
        row = [result.p_matching[str(layer)][str(m)] for m in multipliers]
        return all(a <= b for a, b in zip(row, row[1:], strict=False)) and row[0] <= result.baseline <= row[-1]

    has_null = bool(result.null_effect)
    beating = [k for k in layers if result.beats_null(k)] if has_null else list(layers)
    candidates = [k for k in beating if monotonic(k)]
    best = max(candidates or beating or layers, key=result.effect)
    result.recommended_layer = best
    prefix = "" if beating else "NO LAYER BEATS THE NULL (a random direction of the same norm); showing the "
    result.how_chosen = prefix + (
        f"largest p(matching) difference between multipliers {max(multipliers):+g} and {min(multipliers):+g} "
        + ("among layers where p(matching) rises monotonically with the multiplier" if candidates
           else "(no layer responds monotonically)")
        + (" and that beat the null" if has_null and beating else "") + f": {result.effect(best):+.3f}")
    return result


def layer_sweep(lm: SteerModel, train: Sequence[ContrastivePair], test: Sequence[ContrastivePair],
                layers: Sequence[int], multipliers: Sequence[float] = (-1.0, 1.0), *, dataset: str = "data",
                method: Method = "mean",
                chat: bool = True, system: str | None = None, counterbalance: bool | None = None, null: bool = True,
                progress: bool | None = None) -> SweepResult:
    """p(matching) for every (layer, multiplier), each layer against a random-direction null."""
    task = SweepTask.of(lm, train, test, layers, multipliers, dataset=dataset, method=method, chat=chat,
                        system=system, counterbalance=counterbalance, null=null, progress=progress)
    return _recommend(_sweep_block(lm, task))


def sweep_tasks(task: SweepTask, blocks: int) -> list[SweepTask]:
    """The sweep split into ``blocks`` tasks of interleaved layers, for :func:`merge_sweeps`."""
    n = max(1, min(len(task.layers), blocks))
    return [replace(task, layers=task.layers[i::n], progress=False) for i in range(n)]
