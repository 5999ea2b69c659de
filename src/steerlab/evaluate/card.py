"""The dose-response card: for one vector and a range of multipliers, how far the behaviour moves and
what general capability it costs, and the multiplier range that stays within a capability budget.

At each multiplier:

- **behaviour**: mean p(matching) over A/B items (the vector at its own window, chat-formatted, as in
  CAA), with its standard error over items;
- **capability**: lm-evaluation-harness accuracy on offline tasks (:mod:`steerlab.evaluate.tasks`) with
  lm-eval's standard error; by default each document is chat-formatted, so the vector's own window
  (from the assistant turn) covers the scored answer, as in CAA's MMLU-at-multiplier test;
- **fluency**: perplexity of neutral text (the fact sentences) and the KL divergence of the steered
  next-token distribution from the unsteered one on the same text (mean over tokens), with the vector
  at every position.

The recommended range is the widest run of multipliers around 0 whose accuracy on every task is at
most ``budget`` points below the unsteered accuracy (point estimates; the table carries the errors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch

from ..datasets import ContrastivePair
from ..spec import SteeringFactory, SteeringSpec, VectorEntry
from ..tokens import Rendered
from ..vector import SteeringVector
from .behaviour import Variant, answer_logprobs, p_matching
from .capability import load_facts
from .files import Report, pyplot

if TYPE_CHECKING:
    from ..model import SteerModel


@dataclass
class CardRow:
    multiplier: float
    p_matching: float
    p_matching_se: float
    accuracy: dict[str, float]
    accuracy_se: dict[str, float]
    perplexity: float
    kl: float


@dataclass
class DoseResponseCard(Report):
    default_stem = "card"

    model: str
    vector: str
    layers: list[int]
    behaviour: str
    n_behaviour: int
    tasks: list[str]
    budget: float
    rows: list[CardRow] = field(default_factory=list)

    def baseline(self) -> CardRow:
        return min(self.rows, key=lambda r: abs(r.multiplier))

    def within_budget(self) -> tuple[float, float] | None:
        """The widest run of multipliers around the unsteered one whose accuracy on every task is at
        most ``budget`` points (percentage points) below it."""
        rows = sorted(self.rows, key=lambda r: r.multiplier)
        base = self.baseline()
        ok = [all(100 * (base.accuracy[t] - r.accuracy[t]) <= self.budget + 1e-9 for t in self.tasks) for r in rows]
        i = rows.index(base)
        if not ok[i]:
            return None
        lo = hi = i
        while lo > 0 and ok[lo - 1]:
            lo -= 1
        while hi < len(rows) - 1 and ok[hi + 1]:
            hi += 1
        return rows[lo].multiplier, rows[hi].multiplier

    def table(self) -> str:
        head = ["multiplier", "p(matching)"] + [f"{t} acc" for t in self.tasks] + ["perplexity", "KL (nats/token)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for r in sorted(self.rows, key=lambda r: r.multiplier):
            cells = [f"{r.multiplier:+g}", f"{r.p_matching:.3f} ± {r.p_matching_se:.3f}"]
            cells += [f"{r.accuracy[t]:.3f} ± {r.accuracy_se[t]:.3f}" for t in self.tasks]
            cells += [f"{r.perplexity:.2f}", f"{r.kl:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
        span = self.within_budget()
        lines.append("")
        lines.append(f"Within the budget (at most {self.budget:g} accuracy points lost on every task): "
                     + (f"multipliers {span[0]:+g} to {span[1]:+g}." if span else "none, not even 0."))
        return "\n".join(lines)

    def title(self) -> str:
        return f"Dose-response card: {self.vector} on {self.model}"

    def intro(self) -> str:
        return f"Behaviour: {self.behaviour} ({self.n_behaviour} items); layers {self.layers}."

    def extra_json(self) -> dict:
        return {"within_budget": self.within_budget()}

    def plot(self, path: str | Path | BinaryIO) -> None:
        plt = pyplot()

        rows = sorted(self.rows, key=lambda r: r.multiplier)
        m = [r.multiplier for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.errorbar(m, [r.p_matching for r in rows], yerr=[2 * r.p_matching_se for r in rows], marker="o",
                    color="tab:red", capsize=3, label="behaviour: p(matching)")
        for k, t in enumerate(self.tasks):
            ax.errorbar(m, [r.accuracy[t] for r in rows], yerr=[2 * r.accuracy_se[t] for r in rows], marker="s",
                        capsize=3, color=f"C{k}", ls="--", label=f"capability: {t} accuracy")
        span = self.within_budget()
        if span:
            ax.axvspan(span[0], span[1], color="tab:green", alpha=0.12,
                       label=f"within budget (≤{self.budget:g} points lost)")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("multiplier")
        ax.set_ylabel("probability / accuracy (±2 s.e.)")
        ax2 = ax.twinx()
        ax2.plot(m, [r.kl for r in rows], color="grey", marker=".", lw=1, label="KL from unsteered")
        ax2.set_ylabel("KL (nats/token) on neutral text", color="grey")
        lines = ax.get_legend_handles_labels()
        extra = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7, loc="best")
        ax.set_title(f"{self.vector} on {self.model}: behaviour vs capability", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def neutral_texts() -> list[str]:
    """Plain factual sentences (the fact set, completed)."""
    return [f"{p}{a}." for p, a in load_facts()]


@torch.no_grad()
def fluency(lm: SteerModel, steerings: Sequence, texts: Sequence[str], batch_size: int = 8
            ) -> list[tuple[float, float]]:
    """Per steering: (perplexity of ``texts`` under it, mean KL(unsteered || steered) per token). The
    unsteered pass over each batch is run once and shared by every steering."""
    nll, kl, n = [0.0] * len(steerings), [0.0] * len(steerings), 0
    for i in range(0, len(texts), batch_size):
        batch = lm.prepare([Rendered(t, 0, len(t), None) for t in texts[i: i + batch_size]], padding_side="right")
        inputs = lm.forward_inputs(batch.input_ids, batch.attention_mask)
        base = lm.model(**inputs).logits.float().log_softmax(-1)
        p_base = base.exp()
        mask = batch.attention_mask[:, 1:].bool()  # positions that predict a real next token
        target = batch.input_ids[:, 1:, None]
        for k, steering in enumerate(steerings):
            with lm.steer(steering, batch=batch):
                steered = lm.model(**inputs).logits.float().log_softmax(-1)
            nll[k] -= float(steered[:, :-1].gather(-1, target)[..., 0][mask].sum())
            kl[k] += float((p_base * (base - steered)).sum(-1)[:, :-1][mask].sum())
        n += int(mask.sum())
    return [(math.exp(a / n), b / n) for a, b in zip(nll, kl, strict=True)]


def dose_response(lm: SteerModel, vector: SteeringVector, vector_name: str, behaviour: Sequence[ContrastivePair],
                  multipliers: Sequence[float], *, tasks: Sequence[str] = ("steerlab_quiz", "steerlab_facts_mc"),
                  behaviour_name: str = "", budget: float = 2.0, limit: int | None = None,
                  chat_template: bool | None = None, task_folder: str | Path | None = None,
                  batch_size: int = 8) -> DoseResponseCard:
    """Measure the card (see the module docstring). ``multipliers`` should include 0."""
    import lm_eval

    from .harness import SteerlabLM, task_manager

    multipliers = sorted({float(m) for m in multipliers} | {0.0})
    chat_template = lm.has_chat_template if chat_template is None else chat_template
    card = DoseResponseCard(lm.name, vector_name, sorted(vector.layers), behaviour_name, len(behaviour), list(tasks),
                            budget)
    pm = p_matching(answer_logprobs(lm, behaviour, vector, [Variant(m) for m in multipliers]))  # [M, N]
    manager = task_manager(task_folder)
    factory = SteeringFactory(lm, {vector_name: vector})
    # Fluency with the vector at every position, all multipliers over each batch of neutral text.
    fluencies = fluency(lm, [factory.build(SteeringSpec((VectorEntry(vector_name, m, window="all"),)))
                             for m in multipliers], neutral_texts(), batch_size)
    for k, m in enumerate(multipliers):
        spec = SteeringSpec((VectorEntry(vector_name, m),))
        model = SteerlabLM(lm=lm, steering=spec, vectors={vector_name: vector}, batch_size=batch_size)
        results = lm_eval.simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, limit=limit,
                                          apply_chat_template=chat_template, log_samples=False)["results"] \
            if tasks else {}  # no capability tasks: behaviour and fluency only
        ppl, kl = fluencies[k]
        n = pm.shape[1]
        card.rows.append(CardRow(m, float(pm[k].mean()), float(pm[k].std() / math.sqrt(n)) if n > 1 else 0.0,
                                 {t: float(results[t]["acc,none"]) for t in tasks},
                                 {t: float(results[t].get("acc_stderr,none") or 0.0) for t in tasks}, ppl, kl))
        print(f"[card] multiplier {m:+g}: p(matching) {card.rows[-1].p_matching:.3f}, "
              + ", ".join(f"{t} {card.rows[-1].accuracy[t]:.3f}" for t in tasks)
              + f", perplexity {ppl:.2f}, KL {kl:.4f}", flush=True)
    return card
