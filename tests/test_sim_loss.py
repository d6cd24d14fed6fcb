"""Tests of kvcodec_sim's loss models: Bernoulli and Gilbert–Elliott, formulas and samples.

Empirical checks use a fixed seed and a bound of a few standard errors computed from the
model's own variance (stated at each test), so they are deterministic and not flaky.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvcodec_sim import Bernoulli, GilbertElliott, LinkSpecError, LossModel
from kvcodec_sim.loss import NO_LOSS, parse_gilbert_elliott, parse_loss


def draw(model, count: int, seed: int = 0) -> np.ndarray:
    return np.fromiter(itertools.islice(model.losses(np.random.default_rng(seed)), count), dtype=bool, count=count)


def runs_of_losses(lost: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of True in ``lost``."""
    padded = np.concatenate(([False], lost, [False])).astype(np.int8)
    edges = np.diff(padded)
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


# ---------------------------------------------------------------- Bernoulli


def test_bernoulli_formulas():
    assert Bernoulli(0.25).loss_rate == 0.25
    assert Bernoulli(0.25).mean_burst_length == pytest.approx(4 / 3)
    assert NO_LOSS.loss_rate == 0.0 and NO_LOSS.mean_burst_length == 0.0
    assert isinstance(Bernoulli(0.1), LossModel) and isinstance(GilbertElliott(0.1, 0.5), LossModel)


def test_bernoulli_zero_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert not any(itertools.islice(Bernoulli(0.0).losses(rng), 1000))
    assert rng.bit_generator.state == state


@pytest.mark.parametrize("p", [0.01, 0.1, 0.3])
def test_bernoulli_empirical_rate_and_bursts(p):
    count = 200_000
    lost = draw(Bernoulli(p), count, seed=7)
    # binomial standard error of the rate; 4 standard errors
    assert abs(lost.mean() - p) < 4 * math.sqrt(p * (1 - p) / count)
    runs = runs_of_losses(lost)
    # runs are geometric with mean 1/(1-p), variance p/(1-p)^2
    assert abs(runs.mean() - 1 / (1 - p)) < 4 * math.sqrt(p) / (1 - p) / math.sqrt(len(runs))


def test_bernoulli_is_reproducible_from_the_seed():
    assert (draw(Bernoulli(0.2), 5000, seed=3) == draw(Bernoulli(0.2), 5000, seed=3)).all()
    assert (draw(Bernoulli(0.2), 5000, seed=3) != draw(Bernoulli(0.2), 5000, seed=4)).any()


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_bernoulli_rejects_out_of_range(p):
    with pytest.raises(LinkSpecError, match="p must be a probability"):
        Bernoulli(p)


@pytest.mark.parametrize("p", ["0.1", None, True])
def test_bernoulli_rejects_wrong_types(p):
    with pytest.raises(TypeError, match="p must be"):
        Bernoulli(p)


# ---------------------------------------------------------------- Gilbert–Elliott: formulas


def test_gilbert_formulas_by_hand():
    model = GilbertElliott(p_gb=0.01, p_bg=0.25)  # loss_good = 0, loss_bad = 1
    assert model.bad_fraction == pytest.approx(0.01 / 0.26)
    assert model.loss_rate == pytest.approx(0.01 / 0.26)
    assert model.mean_burst_length == pytest.approx(4.0)  # 1 / p_bg


def test_gilbert_elliott_formulas_by_hand():
    # p_gb + p_bg = 1: the state is drawn afresh for every packet, so losses are independent
    # with rate r = 0.3 * 0.8 + 0.7 * 0.1 = 0.31 and bursts of mean 1 / (1 - r).
    model = GilbertElliott(p_gb=0.3, p_bg=0.7, loss_good=0.1, loss_bad=0.8)
    assert model.loss_rate == pytest.approx(0.31)
    assert model.mean_burst_length == pytest.approx(1 / 0.69)
    assert GilbertElliott(0.0, 0.5, loss_good=0.2).loss_rate == pytest.approx(0.2)  # never Bad
    assert GilbertElliott(0.2, 0.5, loss_good=0.0, loss_bad=0.0).mean_burst_length == 0.0


def test_from_rate_and_burst():
    model = GilbertElliott.from_rate_and_burst(0.02, 5.0)
    assert model.loss_rate == pytest.approx(0.02) and model.mean_burst_length == pytest.approx(5.0)
    with pytest.raises(LinkSpecError):
        GilbertElliott.from_rate_and_burst(0.9, 1.0)  # would need p_gb = 9
    with pytest.raises(LinkSpecError):
        GilbertElliott.from_rate_and_burst(0.1, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(p_gb=-0.1, p_bg=0.5), "p_gb"),
        (dict(p_gb=1.1, p_bg=0.5), "p_gb"),
        (dict(p_gb=0.1, p_bg=0.0), "p_bg"),  # Bad would be absorbing
        (dict(p_gb=0.1, p_bg=0.5, loss_good=2.0), "loss_good"),
        (dict(p_gb=0.1, p_bg=0.5, loss_bad=math.nan), "loss_bad"),
        (dict(p_gb=0.1, p_bg=0.5, loss_good=1.0, loss_bad=1.0), "every packet"),
    ],
)
def test_gilbert_elliott_rejects_out_of_range(kwargs, field):
    with pytest.raises(LinkSpecError, match=field):
        GilbertElliott(**kwargs)


# ---------------------------------------------------------------- Gilbert–Elliott: samples


def asymptotic_sd_of_loss_indicator(model: GilbertElliott) -> float:
    """Standard deviation σ such that the mean of n losses has standard error σ / √n.

    Loss indicators are conditionally independent given the states, so for k ≥ 1
    Cov(L_0, L_k) = (ℓ_B − ℓ_G)² π_B π_G λ^k with λ = 1 − p_gb − p_bg; summing,
    σ² = r(1 − r) + 2 (ℓ_B − ℓ_G)² π_B π_G λ / (1 − λ).
    """
    r, bad = model.loss_rate, model.bad_fraction
    lam = 1 - model.p_gb - model.p_bg
    return math.sqrt(r * (1 - r) + 2 * (model.loss_bad - model.loss_good) ** 2 * bad * (1 - bad) * lam / (1 - lam))


@pytest.mark.parametrize(
    "model",
    [GilbertElliott(0.01, 0.25), GilbertElliott(0.05, 0.5), GilbertElliott(0.02, 0.2, loss_good=0.01, loss_bad=0.7)],
    ids=["gilbert-1%-burst4", "gilbert-9%-burst2", "elliott"],
)
def test_gilbert_elliott_empirical_loss_rate(model):
    count = 400_000
    lost = draw(model, count, seed=11)
    bound = 4 * asymptotic_sd_of_loss_indicator(model) / math.sqrt(count)
    assert abs(lost.mean() - model.loss_rate) < bound, (lost.mean(), model.loss_rate, bound)


@pytest.mark.parametrize("model", [GilbertElliott(0.01, 0.25), GilbertElliott(0.05, 0.5)], ids=["burst4", "burst2"])
def test_gilbert_bursts_are_geometric_with_mean_one_over_p_bg(model):
    # simple Gilbert: a burst is a Bad sojourn, i.i.d. geometric with mean 1/p_bg, variance (1-p_bg)/p_bg^2
    lost = draw(model, 400_000, seed=12)
    runs = runs_of_losses(lost)
    p_bg = model.p_bg
    bound = 4 * math.sqrt((1 - p_bg) / p_bg**2 / len(runs))
    assert abs(runs.mean() - model.mean_burst_length) < bound, (runs.mean(), model.mean_burst_length, bound)


def test_gilbert_elliott_empirical_burst_length():
    # general Gilbert–Elliott: runs are not independent; estimate the standard error of the
    # ratio (lost packets / runs) with batch means over 40 batches and allow 5 of them.
    model = GilbertElliott(0.02, 0.2, loss_good=0.01, loss_bad=0.7)
    batches = draw(model, 800_000, seed=13).reshape(40, -1)
    ratios = np.array([batch.sum() / len(runs_of_losses(batch)) for batch in batches])
    total = batches.sum() / sum(len(runs_of_losses(batch)) for batch in batches)
    bound = 5 * ratios.std(ddof=1) / math.sqrt(len(ratios))
    assert abs(total - model.mean_burst_length) < bound, (total, model.mean_burst_length, bound)


def test_gilbert_elliott_is_reproducible_and_starts_stationary():
    model = GilbertElliott(0.05, 0.05)  # half the time Bad
    assert (draw(model, 3000, seed=5) == draw(model, 3000, seed=5)).all()
    first = [next(model.losses(np.random.default_rng(seed))) for seed in range(2000)]
    assert abs(np.mean(first) - 0.5) < 4 * math.sqrt(0.25 / 2000)  # the first packet's state is stationary


# ---------------------------------------------------------------- the time clock (idle steps)


@given(p_gb=st.floats(0.0, 1.0), p_bg=st.floats(0.01, 1.0), steps=st.integers(0, 60), bad=st.booleans())
def test_bad_after_is_the_transition_matrix_power(p_gb, p_bg, steps, bad):
    model = GilbertElliott(p_gb, p_bg, loss_good=0.0, loss_bad=0.5)
    transition = np.array([[1 - p_gb, p_gb], [p_bg, 1 - p_bg]])  # rows: from Good, from Bad
    expected = np.linalg.matrix_power(transition, steps)[int(bad), 1]
    assert model.bad_after(steps, bad) == pytest.approx(expected, abs=1e-9)


def test_bad_after_rejects_negative_steps():
    with pytest.raises(ValueError, match="steps"):
        GilbertElliott(0.01, 0.25).bad_after(-1, True)


def test_send_zero_is_next_and_idle_steps_draw_once():
    model = GilbertElliott(0.05, 0.3)
    plain = draw(model, 5000, seed=4)
    gen = model.losses(np.random.default_rng(4))
    sent = [next(gen)] + [gen.send(0) for _ in range(4999)]
    assert (np.array(sent) == plain).all()  # k = 0 draws nothing more: the packet clock's sequence
    gen = model.losses(np.random.default_rng(4))
    with_idle = [next(gen)] + [gen.send(3 if i == 10 else 0) for i in range(4999)]
    assert with_idle[:11] == list(plain[:11]) and with_idle != list(plain)


def test_draws_follow_the_spec_order_literally():
    # specs/link-model.md §7.1: u0 for the initial state; per packet u1 (loss) and u2
    # (transition); before a packet after k > 0 idle slots one more u3 — all successive
    # draws of one stream, across the implementation's block boundaries.
    model = GilbertElliott(0.3, 0.4, loss_good=0.1, loss_bad=0.8)
    gaps = np.random.default_rng(7).choice([0, 0, 0, 1, 3, 50], size=12_000).tolist()
    rng = np.random.default_rng(1)
    bad, expected = rng.random() < model.bad_fraction, []
    for i, k in enumerate(gaps):
        if i and k:
            bad = rng.random() < model.bad_after(k, bad)
        expected.append(rng.random() < (model.loss_bad if bad else model.loss_good))
        u2 = rng.random()
        bad = u2 >= model.p_bg if bad else u2 < model.p_gb
    gen = model.losses(np.random.default_rng(1))
    got = [next(gen)] + [gen.send(k) for k in gaps[1:]]
    assert got == expected


def test_no_loss_also_takes_idle_steps():
    gen = Bernoulli(0.0).losses(np.random.default_rng(0))
    assert [next(gen), gen.send(5), gen.send(0)] == [False, False, False]


def test_bad_after_needs_an_integer():
    with pytest.raises(TypeError):
        GilbertElliott(1.0, 1.0).bad_after(2.5, True)


def test_independent_loss_ignores_idle_steps():
    model = Bernoulli(0.2)
    gen = model.losses(np.random.default_rng(9))
    assert [next(gen)] + [gen.send(7) for _ in range(999)] == list(draw(model, 1000, seed=9))


@pytest.mark.parametrize("model", [GilbertElliott(0.01, 0.25), GilbertElliott(0.02, 0.2, loss_good=0.01, loss_bad=0.7)],
                         ids=["gilbert", "elliott"])
def test_idle_steps_keep_the_stationary_loss_rate(model):
    # random idle gaps between packets: still the stationary rate. λ ≥ 0 here, so idle steps
    # only weaken the correlation: the packet clock's asymptotic variance bounds this one.
    count = 200_000
    gaps = np.random.default_rng(1).choice([0, 0, 1, 5, 100], size=count).tolist()
    gen = model.losses(np.random.default_rng(21))
    lost = np.array([next(gen)] + [gen.send(k) for k in gaps[1:]])
    bound = 4 * asymptotic_sd_of_loss_indicator(model) / math.sqrt(count)
    assert abs(lost.mean() - model.loss_rate) < bound, (lost.mean(), model.loss_rate, bound)


def test_long_idle_gaps_make_losses_independent():
    # with 1000 idle steps between packets the chain forgets its state: P(lost | previous lost)
    # falls from 1 − p_bg = 0.75 (back to back) to the stationary rate r = 3.85 %.
    model = GilbertElliott(0.01, 0.25)
    count = 200_000
    gen = model.losses(np.random.default_rng(22))
    lost = np.array([next(gen)] + [gen.send(1000) for _ in range(count - 1)])
    after_loss = lost[1:][lost[:-1]]
    r = model.loss_rate
    assert abs(after_loss.mean() - r) < 5 * math.sqrt(r * (1 - r) / len(after_loss)), after_loss.mean()
    back_to_back = draw(model, count, seed=22)
    assert back_to_back[1:][back_to_back[:-1]].mean() > 0.7


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(("text", "p"), [("0.01", 0.01), ("1%", 0.01), ("30%", 0.3), ("0", 0.0), (" 0.5 % ", 0.005)])
def test_parse_loss(text, p):
    assert parse_loss(text) == Bernoulli(p)


@pytest.mark.parametrize("text", ["1", "100%", "1.5", "-1%", "x", "", "1 pct", "nan"])
def test_parse_loss_rejects(text):
    with pytest.raises(LinkSpecError) as info:
        parse_loss(text)
    assert str(info.value).splitlines() == [str(info.value)]


def test_parse_gilbert_elliott():
    assert parse_gilbert_elliott("0.01/0.25") == GilbertElliott(0.01, 0.25)
    assert parse_gilbert_elliott("1%/25%/0.1%/50%") == GilbertElliott(0.01, 0.25, 0.001, 0.5)


@pytest.mark.parametrize("text", ["0.01", "0.01/0.25/0.1", "0.01/0/0/1", "a/b", "1/1/1/1", "0.01/0.25/0/1/0", ""])
def test_parse_gilbert_elliott_rejects(text):
    with pytest.raises(LinkSpecError) as info:
        parse_gilbert_elliott(text)
    assert str(info.value).splitlines() == [str(info.value)]
