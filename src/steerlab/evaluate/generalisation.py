"""In- vs out-of-distribution generalisation of steering vectors (Tan, Chanin et al., 2024).

Prompt variants of one dataset: ``baseline`` (the model's default system prompt), a system prompt
asking for (``system+``) or against (``system-``) the behaviour, and the same sentence prefixed to
the user prompt (``user+`` / ``user-``). A vector is trained on each variant's training half and
every vector is evaluated on every variant's test half, all rescaled to the baseline vector's norm.
ID = baseline vector on baseline prompts; OOD = the baseline vector on another variant.
Relative steerability = OOD / ID steerability, reported where ID is clearly positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch

from ..datasets import ContrastivePair
from ..methods import caa
from .behaviour import Variant, answer_logprobs, propensity
from .files import Report, pyplot
from .reliability import MULTIPLIERS, fit_lines

if TYPE_CHECKING:
    from ..model import SteerModel

VARIANTS = ("baseline", "system+", "system-", "user+", "user-")


def behaviour_sentences(name: str) -> tuple[str, str]:
    """A sentence asking for and one asking against the behaviour named ``name``."""
    words = Path(name).stem.replace("-", " ").replace("_", " ")
    return (f"When you answer, choose the option that shows {words}.",
            f"When you answer, choose the option that does not show {words}.")


def render_variant(pairs: Sequence[ContrastivePair], variant: str, for_text: str, against_text: str
                   ) -> tuple[list[ContrastivePair], str | None]:
    """The pairs and system prompt of one prompt variant."""
    if variant == "baseline":
        return list(pairs), None
    if variant == "system+":
        return list(pairs), for_text
    if variant == "system-":
        return list(pairs), against_text
    sentence = for_text if variant == "user+" else against_text
    return [replace(p, prompt=f"{sentence}\n\n{p.prompt}") for p in pairs], None


@dataclass
class GeneralisationReport(Report):
    default_stem = "generalisation"  # files: generalisation-<dataset file stem>.md/.json/.png

    model: str
    dataset: str
    layer: int
    scale: float
    variants: list[str]
    steerability: list[list[float]]  # [train variant][test variant] mean per-item slope
    id_steerability: float
    ood_steerability: dict[str, float]  # baseline vector on each other variant
    relative_steerability: dict[str, float | None]

    def title(self) -> str:
        return f"Generalisation: {self.dataset} on {self.model}, layer {self.layer}"

    def intro(self) -> str:
        return (f"Mean per-item steerability (slope of propensity over the multiplier, vectors scaled to "
                f"{self.scale:g}); rows: the variant the vector was trained on, columns: the variant it is "
                f"evaluated on. In-distribution steerability of the baseline vector: {self.id_steerability:.3f}.")

    def table(self) -> str:
        lines = ["| trained on \\ evaluated on | " + " | ".join(self.variants) + " |",
                 "|---|" + "---:|" * len(self.variants)]
        for name, row in zip(self.variants, self.steerability, strict=True):
            lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
        lines += ["", "| variant | baseline vector's steerability | relative to in-distribution |", "|---|---:|---:|"]
        for name, value in self.ood_steerability.items():
            rel = self.relative_steerability.get(name)
            lines.append(f"| {name} | {value:.3f} | {'-' if rel is None else f'{rel:.2f}'} |")
        return "\n".join(lines)

    def plot(self, path: str | Path | BinaryIO) -> None:
        plt = pyplot()
        m = torch.tensor(self.steerability)
        fig, ax = plt.subplots(figsize=(5.2, 4.2))
        lim = float(m.abs().max()) or 1.0
        im = ax.imshow(m.numpy(), cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(self.variants)), self.variants, rotation=30)
        ax.set_yticks(range(len(self.variants)), self.variants)
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("vector trained on")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="mean steerability")
        ax.set_title(f"{Path(self.dataset).stem} (layer {self.layer})", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


@torch.no_grad()
def generalisation(lm: SteerModel, train: Sequence[ContrastivePair], test: Sequence[ContrastivePair], layer: int, *,
                   dataset: str = "data", behaviour: tuple[str, str] | None = None, scale: float = 1.0,
                   multipliers: Sequence[float] = MULTIPLIERS, variants: Sequence[str] = VARIANTS,
                   chat: bool = True, min_id: float = 1e-3, counterbalance: bool | None = None,
                   progress: bool | None = None) -> GeneralisationReport:
    for_text, against_text = behaviour or behaviour_sentences(dataset)
    vectors = {}
    for v in variants:
        pairs, system = render_variant(train, v, for_text, against_text)
        vectors[v] = caa.extract(lm, pairs, layer, chat=chat, system=system, counterbalance=counterbalance,
                                 measure_letter=False, progress=progress)
    base_norm = vectors["baseline"].norms()[layer] if "baseline" in vectors else None
    if base_norm is not None:
        vectors = {k: vec.normalised(base_norm) for k, vec in vectors.items()}
    x = torch.tensor([float(m) for m in multipliers])
    matrix = [[0.0] * len(variants) for _ in variants]
    for j, test_variant in enumerate(variants):
        pairs, system = render_variant(test, test_variant, for_text, against_text)
        conds = [Variant(m * scale, layer, vectors[v]) for v in variants for m in multipliers]
        prop = propensity(answer_logprobs(lm, pairs, None, conds, chat=chat, system=system, progress=progress))
        for i in range(len(variants)):
            slopes, _, _ = fit_lines(x, prop[i * len(multipliers):(i + 1) * len(multipliers)])
            matrix[i][j] = float(slopes.mean())
    base = list(variants).index("baseline")
    id_s = matrix[base][base]
    ood = {v: matrix[base][j] for j, v in enumerate(variants) if v != "baseline"}
    rel = {v: (s / id_s if id_s > min_id else None) for v, s in ood.items()}
    return GeneralisationReport(lm.name, dataset, layer, scale, list(variants), matrix, id_s, ood, rel)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(xs):
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        r = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return torch.tensor(r, dtype=torch.float64)

    ra, rb = ranks(list(a)), ranks(list(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float(ra @ rb) / denom if denom else float("nan")
