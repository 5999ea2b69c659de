"""What makes a reliability result trustworthy: letter-balanced splits, counterbalanced (letter-free)
vectors, bootstrap intervals that cover, a random-direction null, float32 scores on bf16 models."""

import dataclasses

import pytest
import torch
from tiny import tiny_model

from steerlab import datasets
from steerlab.datasets import ContrastivePair, DatasetError
from steerlab.evaluate.behaviour import float32_logits
from steerlab.evaluate.reliability import reliability
from steerlab.evaluate.stats import bootstrap_ci, random_direction, slope_standard_errors
from steerlab.methods import caa
from steerlab.vector import SteeringVector


def _ab(i: int, matching: str) -> ContrastivePair:
    other = "B" if matching == "A" else "A"
    return ContrastivePair(f"Item {i}: which do you pick?\n\nChoices:\n (A) apples {i}\n (B) pears {i}",
                           f"({matching})", f"({other})")


# 30 matching (A) then 18 matching (B) in file order interleaved like a real file's first slice.
BIASED = [_ab(i, "A" if i % 8 < 5 else "B") for i in range(80)]


def test_split_balances_both_halves_by_letter_and_keeps_file_order():
    first = BIASED[:48]
    assert datasets.describe_balance(first) == "(A) 30 / (B) 18"
    train, test = datasets.split(BIASED, n_train=16, n_test=10)
    assert datasets.balance(train) == {"(A)": 8, "(B)": 8} and datasets.balance(test) == {"(A)": 5, "(B)": 5}
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    a_items = [p for p in BIASED if p.positive == "(A)"]
    assert [p for p in train if p.positive == "(A)"] == a_items[:8]  # the earliest of each letter train
    assert [p for p in test if p.positive == "(A)"] == a_items[8:13]  # the next ones test
    assert datasets.balance(train[:4]) == {"(A)": 2, "(B)": 2}  # interleaved: prefixes stay balanced
    # Default sizes: halves of the largest balanced subset.
    train, test = datasets.split(BIASED)
    n_b = sum(p.positive == "(B)" for p in BIASED)
    assert datasets.balance(train) == datasets.balance(test) == {"(A)": n_b // 2, "(B)": n_b // 2}
    # Asking for more than a letter has is an error that says what to do; --no-balance takes file order.
    with pytest.raises(DatasetError, match="at most"):
        datasets.split(BIASED, n_train=70, n_test=4)
    train, test = datasets.split(BIASED, n_train=48, n_test=8, balance=False)
    assert train == BIASED[:48] and test == BIASED[48:56]


def test_persona_split_balances_letter_and_yes(shared_data):
    persona = datasets.load(shared_data / "mwe" / "persona" / "narcissism.jsonl")
    train, test = datasets.split(persona, n_train=48, n_test=32)
    assert set(datasets.balance(train).values()) == {12} and len(datasets.balance(train)) == 4
    assert set(datasets.balance(test).values()) == {8}
    xrisk = datasets.load(shared_data / "mwe" / "xrisk" / "corrigible-neutral-HHH.jsonl")
    assert datasets.describe_balance(xrisk[:48]) == "(A) 30 / (B) 18"  # the pitfall, in the real file
    train, _ = datasets.split(xrisk, n_train=48, n_test=32)
    assert datasets.describe_balance(train) == "(A) 24 / (B) 24"


def test_swap_options_exchanges_texts_and_flips_letters():
    item = ContrastivePair("Q?\n\nChoices:\n (A) Yes, gladly.\n (B) No.", "(A)", "(B)", {"source": "x"})
    swapped = datasets.swap_options(item)
    assert swapped.prompt == "Q?\n\nChoices:\n (A) No.\n (B) Yes, gladly."
    assert (swapped.positive, swapped.negative) == ("(B)", "(A)")
    assert datasets.swap_options(swapped).prompt == item.prompt
    # Worked examples before the question: only the last block of options is the question's.
    shots = ContrastivePair("Ex:\n (A) one\n (B) two\nNow:\n (A) red\n (B) blue", "(B)", "(A)")
    assert datasets.swap_options(shots).prompt == "Ex:\n (A) one\n (B) two\nNow:\n (A) blue\n (B) red"
    assert datasets.swap_options(ContrastivePair("How was it?", "Great.", "Awful.")) is None
    assert datasets.counterbalanced([item, ContrastivePair("x", "a", "b")]) is None


def _synthetic_differences(behaviour: torch.Tensor, letter: torch.Tensor):
    """Activations that are exactly behaviour + letter + an item offset (shared by both answers)."""
    def differences(lm, pairs, layers, **_):
        pos, neg = [], []
        for i, p in enumerate(pairs):
            offset = torch.full_like(behaviour, 0.01 * i)
            sign = {"A": 1.0, "B": -1.0}
            pos.append(offset + behaviour + sign[datasets.answer_letter(p.positive)] * letter)
            neg.append(offset - behaviour + sign[datasets.answer_letter(p.negative)] * letter)
        return {k: torch.stack(pos) for k in layers}, {k: torch.stack(neg) for k in layers}
    return differences


def test_letter_bias_large_under_naive_extraction_and_gone_when_counterbalanced(monkeypatch):
    lm = tiny_model("llama")
    d = lm.hidden_size
    behaviour = torch.zeros(d)
    behaviour[0] = 1.0
    letter = torch.zeros(d)
    letter[1] = 5.0  # the letter direction is five times the behaviour's size, as on real models
    monkeypatch.setattr(caa, "differences", _synthetic_differences(behaviour, letter))
    biased = BIASED[:48]  # 30 (A) / 18 (B)
    naive = caa.extract(lm, biased, 2, counterbalance=False)
    fair = caa.extract(lm, biased, 2)
    assert naive.meta["letter_share"]["2"] > 0.7 and not naive.meta["counterbalanced"]
    assert fair.meta["counterbalanced"] and fair.meta["letter_share"]["2"] < 1e-6
    torch.testing.assert_close(fair.layers[2], 2 * behaviour)  # exactly the behaviour difference
    assert fair.meta["balance"] == "(A) 30 / (B) 18"
    letter_dir = caa.letter_directions(lm, biased, 2)[2]
    torch.testing.assert_close(letter_dir, 2 * letter)
    # A balanced training slice already cancels it in the plain mean.
    balanced, _ = datasets.split(BIASED, n_train=36, n_test=4)
    assert caa.extract(lm, balanced, 2, counterbalance=False).meta["letter_share"]["2"] < 1e-6


@pytest.mark.slow
def test_letter_share_on_the_real_model(smol, shared_data):
    """On SmolLM2 the first 48 corrigible items (30 A / 18 B) give a vector that is almost all letter."""
    items = datasets.load(shared_data / "mwe" / "xrisk" / "corrigible-neutral-HHH.jsonl")[:48]
    naive = caa.extract(smol, items, 12, counterbalance=False, progress=False)
    fair = caa.extract(smol, items, 12, progress=False)
    assert naive.meta["letter_share"]["12"] > 0.9
    assert fair.meta["letter_share"]["12"] < 0.3
    assert fair.norms()[12] < 0.2 * naive.norms()[12]


def test_bootstrap_interval_covers_at_about_the_stated_rate():
    gen = torch.Generator().manual_seed(1)
    hits_mean = hits_frac = 0
    trials = 300
    for t in range(trials):
        slopes = 0.3 + torch.randn(60, generator=gen, dtype=torch.float64)
        lo, hi = bootstrap_ci(slopes, n_boot=600, seed=t)
        hits_mean += lo <= 0.3 <= hi
        true_frac = float(torch.distributions.Normal(0.3, 1.0).cdf(torch.tensor(0.0)))
        lo, hi = bootstrap_ci(slopes, lambda v: (v <= 0).double().mean(1), n_boot=600, seed=t)
        hits_frac += lo <= true_frac <= hi
    assert 0.89 <= hits_mean / trials <= 0.98
    assert 0.88 <= hits_frac / trials <= 0.98


def test_slope_standard_errors_by_hand():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    se = slope_standard_errors(x, y)
    # Column 0: slope 1.3, residuals from the least-squares line, SSR / (n-2) / Sxx.
    xc = x - x.mean()
    b = float((xc * (y[:, 0] - y[:, 0].mean())).sum() / (xc @ xc))
    resid = y[:, 0] - y[:, 0].mean() - b * xc
    assert float(se[0]) == pytest.approx(float(((resid ** 2).sum() / 2 / (xc @ xc)).sqrt()))
    assert float(se[1]) == 0.0


def test_random_direction_null_has_mean_slope_near_zero():
    lm = tiny_model("llama")
    pairs = [_ab(i, "A" if i % 2 else "B") for i in range(8)]
    vec = caa.extract(lm, pairs[:4], 2, progress=False)
    means, sds = [], []
    for seed in range(6):
        rep = reliability(lm, vec, pairs[4:], scale=2.0, seed=seed, n_boot=200, noise_items=0)
        means.append(rep.null_mean_slope)
        sds.append(rep.null_slope_sd)
        assert len(rep.null_slopes) == 4 and len(rep.slope_se) == 4
        assert rep.mean_slope_ci[0] <= rep.mean_slope <= rep.mean_slope_ci[1]
    spread = torch.tensor(sds).mean() / len(means) ** 0.5
    assert abs(torch.tensor(means).mean()) < 3 * spread + 1e-6
    # The null itself, analysed as the vector: exactly no difference from the null.
    null = SteeringVector({2: random_direction(vec.layers[2], seed=0)}, vec.model_name, vec.hidden_size)
    rep = reliability(lm, null, pairs[4:], scale=2.0, seed=0, n_boot=200, noise_items=0)
    assert rep.beyond_null_ci == [0.0, 0.0] and rep.verdict().startswith("indistinguishable")
    # Effects smaller than the numeric noise floor are not called in either direction.
    assert dataclasses.replace(rep, noise_floor=1e9).effect_code() == "noise"


def test_float32_scores_on_a_bfloat16_model():
    lm = tiny_model("llama")
    lm.model.to(torch.bfloat16)
    ids = torch.tensor([[1, 5, 9, 12]])
    seen = {}
    head = lm.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda m, a: seen.setdefault("h", a[0]))
    try:
        with torch.no_grad(), float32_logits(lm):
            logits = lm.model(ids).logits
    finally:
        handle.remove()
        lm.model.to(torch.float32)
    assert logits.dtype == torch.float32 and seen["h"].dtype == torch.bfloat16
    torch.testing.assert_close(logits, seen["h"].float() @ head.weight.float().T.to(torch.bfloat16).float(),
                               atol=1e-2, rtol=1e-2)
    assert (logits != logits.to(torch.bfloat16).float()).any()  # not rounded to the bfloat16 grid


@pytest.mark.slow
def test_reliability_on_the_real_model_against_the_null(smol, tmp_path):
    pairs = datasets.to_open_answers(datasets.builtin("sentiment"))
    train, test = datasets.split(pairs, n_train=24, n_test=32)
    vec = caa.extract(smol, train, 12, progress=False)
    # A random direction of this norm also moves these multi-token answers a lot item by item, so the
    # comparison needs several null directions to be decided at 32 items.
    rep = reliability(smol, vec, test, scale=1.0, dataset="sentiment", n_boot=500, null_directions=4)
    assert rep.verdict() == "steers beyond the null", rep.summary()
    assert rep.beyond_null_ci[0] > 0 and len(rep.null_slopes) == 4 * 32
    assert rep.noise_floor is not None and rep.noise_floor < 1e-3  # float32 model: rounding only
    assert rep.p_matching_at_extremes[0] < rep.unsteered_p_matching < rep.p_matching_at_extremes[1]
    path = rep.save(tmp_path)
    text = path.read_text()
    assert "vector norm" in text and "null" in text and "noise floor" in text
    assert (tmp_path / "reliability-sentiment.png").stat().st_size > 5000
    # A tiny vector in the same direction is indistinguishable from the null and says so.
    faint = reliability(smol, vec * 1e-3, test[:8], scale=1.0, dataset="sentiment", n_boot=500, noise_items=0)
    assert faint.verdict().startswith("indistinguishable"), faint.summary()


@pytest.mark.slow
def test_cli_reliability_balances_and_writes_each_report(smol, shared_data, tmp_path, capsys):
    from steerlab import cli

    data = [str(shared_data / "mwe" / "xrisk" / "corrigible-neutral-HHH.jsonl"),
            str(shared_data / "mwe" / "persona" / "narcissism.jsonl")]
    assert cli.main(["reliability", "--data", *data, "--layer", "12", "--scale", "4", "--train", "8", "--test", "4",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "8 training pairs ((A) 4 / (B) 4), 4 test pairs ((A) 2 / (B) 2)" in out
    assert "(A) No 2 / (A) Yes 2 / (B) No 2 / (B) Yes 2" in out
    assert out.count("null (random direction") == 2 and out.count("letter share") == 2
    # Each report was written as its dataset finished: the first "wrote" comes before the second summary.
    first_wrote = out.index("wrote")
    assert first_wrote < out.index("narcissism.jsonl: mean steerability")
    for stem in ("corrigible-neutral-HHH", "narcissism"):
        md = (tmp_path / f"reliability-{stem}.md").read_text()
        assert "training (A)" in md and "counterbalanced: True" in md
    assert cli.main(["reliability", "--data", data[0], "--layer", "12", "--train", "1200", "--test", "4",
                     "--out", str(tmp_path)]) == 2
    assert "at most" in capsys.readouterr().err


def test_cli_model_help_lists_every_builtin_model(capsys):
    from steerlab import cli
    from steerlab.sources import BUILTIN_MODELS

    with pytest.raises(SystemExit):
        cli.main(["reliability", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in BUILTIN_MODELS)
