"""How well a partitioner agrees with a person: the project's hand labels (``pace/data/hand_labels.tsv``,
200 words labelled for each built-in task) against a partitioner's labels for the same words, as
accuracy, precision, recall and Cohen's kappa with a bootstrap interval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import torch

from ..errors import UnknownNameError
from ..evaluate.stats import bootstrap_ci


def hand_labels(task: str) -> dict[str, bool]:
    """``{word: undesirable}`` for ``task`` from the packaged hand labels."""
    lines = resources.files("steerlab.pace").joinpath("data/hand_labels.tsv").read_text(encoding="utf-8").splitlines()
    rows = [x.split("\t") for x in lines if x and not x.startswith("#")]
    header, body = rows[0], rows[1:]
    if task not in header[1:]:
        raise UnknownNameError(f"No hand labels for task {task!r}; there are labels for {header[1:]}.")
    col = header.index(task)
    return {r[0]: r[col] == "1" for r in body if r[col] != "-"}  # "-": the word is labelled for other tasks only


def _kappa(truth: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Cohen's kappa along the last dimension (boolean tensors)."""
    t, p = truth.double(), pred.double()
    observed = (t == p).float().mean(-1)
    chance = t.mean(-1) * p.mean(-1) + (1 - t.mean(-1)) * (1 - p.mean(-1))
    return (observed - chance) / (1 - chance).clamp(min=1e-12)


@dataclass
class Agreement:
    task: str
    partitioner: str
    n: int
    hand_undesirable: int
    predicted_undesirable: int
    accuracy: float
    precision: float
    recall: float
    kappa: float
    kappa_ci: tuple[float, float]  # 95% percentile bootstrap over words
    auc: float | None = None  # ranking quality of the partitioner's scores, whatever the threshold

    def row(self) -> str:
        auc = "-" if self.auc is None else f"{self.auc:.3f}"
        return (f"| {self.partitioner} | {self.n} | {self.hand_undesirable} | {self.predicted_undesirable} | "
                f"{self.accuracy:.3f} | {self.precision:.3f} | {self.recall:.3f} | {self.kappa:.3f} "
                f"[{self.kappa_ci[0]:.3f}, {self.kappa_ci[1]:.3f}] | {auc} |")

    HEADER = ("| partitioner | words | hand: undesirable | predicted | accuracy | precision | recall | "
              "Cohen's kappa [95% CI] | ROC AUC of scores |\n|---|---:|---:|---:|---:|---:|---:|---|---:|")


def _auc(truth: torch.Tensor, scores: torch.Tensor) -> float:
    """P(score of a random undesirable word > score of a random benign one), ties counted half."""
    pos, neg = scores[truth], scores[~truth]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def agreement(predicted: Mapping[str, bool], task: str, partitioner: str, *, exclude: Sequence[str] = (),
              scores: Mapping[str, float] | None = None) -> Agreement:
    """Compare ``predicted`` labels with the hand labels of ``task`` on the words both have (minus
    ``exclude``, e.g. a prompt's worked examples); with ``scores``, also their ROC AUC."""
    truth_map = hand_labels(task)
    words = [w for w in truth_map if w in predicted and w not in set(exclude)]
    truth = torch.tensor([truth_map[w] for w in words])
    pred = torch.tensor([bool(predicted[w]) for w in words])
    tp = int((truth & pred).sum())
    lo, hi = bootstrap_ci(torch.stack([truth, pred], 1), lambda v: _kappa(v[..., 0] > 0, v[..., 1] > 0))
    return Agreement(task, partitioner, len(words), int(truth.sum()), int(pred.sum()),
                     float((truth == pred).float().mean()), tp / max(int(pred.sum()), 1),
                     tp / max(int(truth.sum()), 1), float(_kappa(truth, pred)), (lo, hi),
                     _auc(truth, torch.tensor([float(scores[w]) for w in words])) if scores is not None else None)
