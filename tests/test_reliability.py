"""Reliability metrics against hand computations, and the reliability / generalisation runs."""

import pytest
import torch
from tiny import tiny_model

from steerlab import datasets
from steerlab.evaluate.generalisation import VARIANTS, generalisation, render_variant, spearman
from steerlab.evaluate.reliability import fit_lines, matching_is_yes, reliability, variance_explained
from steerlab.methods import caa


def test_fit_lines_by_hand():
    x = torch.tensor([-1.0, 0.0, 1.0])
    y = torch.tensor([[1.0, 3.0], [2.0, 3.0], [3.0, 3.0]])  # item 0: slope 1, perfect; item 1: flat
    slopes, intercepts, r2 = fit_lines(x, y)
    torch.testing.assert_close(slopes, torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(intercepts, torch.tensor([2.0, 3.0], dtype=torch.float64))
    assert r2[0] == pytest.approx(1.0)
    y2 = torch.tensor([[0.0], [1.0], [0.0]])  # slope 0, all variance unexplained
    s2, _, r22 = fit_lines(x, y2)
    assert float(s2) == pytest.approx(0.0) and float(r22) == pytest.approx(0.0)


def test_variance_explained_by_hand():
    slopes = torch.tensor([1.0, 1.0, 3.0, 3.0])
    factor = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    r2, coef = variance_explained(slopes, factor)
    assert r2 == pytest.approx(1.0) and coef == pytest.approx([1.0, 2.0])
    r2, _ = variance_explained(torch.tensor([1.0, 3.0, 1.0, 3.0]), factor)
    assert r2 == pytest.approx(0.0)


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    a, b = [0.1, 0.5, 0.3, 0.9, 0.3], [1.0, 2.0, 0.5, 3.0, 0.7]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


def test_matching_is_yes_for_persona_and_ab(shared_data):
    persona = datasets.load(shared_data / "mwe" / "persona" / "narcissism.jsonl")[:4]
    assert [matching_is_yes(p) for p in persona] == [p.meta["matching_is_yes"] for p in persona]
    item = datasets.ContrastivePair("Q?\n\nChoices:\n(A): No\n(B): Yes", "(B)", "(A)")
    assert matching_is_yes(item) is True


PAIRS = [datasets.ContrastivePair(f"Item {i}: do you like it?\n\nChoices:\n(A): Yes\n(B): No",
                                  "(A)" if i % 2 else "(B)", "(B)" if i % 2 else "(A)") for i in range(8)]


def test_reliability_report(tmp_path):
    lm = tiny_model("llama")
    vec = caa.extract(lm, PAIRS[:4], 2, progress=False)
    rep = reliability(lm, vec, PAIRS[4:], scale=3.0, dataset="tiny")
    assert rep.n_items == 4 and len(rep.slopes) == 4
    assert rep.anti_steerable_fraction == sum(s <= 0 for s in rep.slopes) / 4
    assert rep.mean_slope == pytest.approx(sum(rep.slopes) / 4)
    assert rep.spurious_r2_yes is not None and 0 <= rep.spurious_r2_a <= 1
    # The slope is the least-squares fit of the stored propensities.
    prop = torch.tensor(rep.propensities)
    slopes, _, _ = fit_lines(torch.tensor(rep.multipliers), prop)
    torch.testing.assert_close(slopes.float(), torch.tensor(rep.slopes).float())
    path = rep.save(tmp_path)
    assert path.exists() and (tmp_path / "reliability-tiny.json").exists()
    assert (tmp_path / "reliability-tiny.png").exists()


def test_generalisation_matrix(tmp_path):
    lm = tiny_model("llama")
    rep = generalisation(lm, PAIRS[:4], PAIRS[4:], 2, dataset="tiny", scale=2.0)
    assert len(rep.steerability) == len(VARIANTS) and all(len(r) == len(VARIANTS) for r in rep.steerability)
    assert rep.id_steerability == rep.steerability[0][0]
    assert set(rep.ood_steerability) == set(VARIANTS) - {"baseline"}
    rep.save(tmp_path)
    assert (tmp_path / "generalisation-tiny.png").stat().st_size > 5000
    pairs, system = render_variant(PAIRS[:1], "user-", "for", "against")
    assert pairs[0].prompt.startswith("against") and system is None
