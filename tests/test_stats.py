"""Per-cell sweep statistics: planted effects are found, null effects are not, p-values are calibrated."""

from __future__ import annotations

import math

import pytest
import torch

from interp.stats import CellStats, StatsError, benjamini_hochberg, cell_stats


def _binomial_band(n: int, p: float, k: float = 3.0) -> tuple[float, float]:
    sd = math.sqrt(p * (1 - p) / n)
    return p - k * sd, p + k * sd


def test_mean_se_and_missing_cells():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 4.0, 5.0], [5.0, 9.0, 7.0]])
    s = cell_stats(x, n_boot=200, n_perm=64)
    assert s.n.tolist() == [3, 3, 2]
    assert torch.allclose(s.mean, torch.tensor([3.0, 5.0, 6.0], dtype=torch.float64))
    assert s.se[0].item() == pytest.approx(torch.tensor([1.0, 3.0, 5.0]).std().item() / math.sqrt(3))
    assert s.se[2].item() == pytest.approx(torch.tensor([5.0, 7.0]).std().item() / math.sqrt(2))
    assert (s.ci_low <= s.mean).all() and (s.mean <= s.ci_high).all()


def test_planted_effect_is_found_and_null_cells_are_not():
    """A 6×10 grid, 30 items, effect of 1.5 s.d. planted in 4 cells; correlated noise across cells."""
    g = torch.Generator().manual_seed(1)
    n, shape = 30, (6, 10)
    shared = torch.randn(n, 1, 1, generator=g)  # item-level noise shared by every cell (dependence)
    x = 0.7 * shared + 0.7 * torch.randn(n, *shape, generator=g)
    planted = torch.zeros(shape, dtype=torch.bool)
    planted[1, 2] = planted[1, 3] = planted[4, 7] = planted[5, 0] = True
    x[:, planted] += 1.5
    for corr in ("maxT", "bh"):
        s = cell_stats(x, n_perm=4000, n_boot=500, correction=corr, seed=3)
        sig = s.significant()
        assert sig[planted].all(), corr
        assert not sig[~planted].any(), corr
    s = cell_stats(x, n_perm=4000, n_boot=500, seed=3)
    assert (s.ci_low[planted] > 0).all()
    assert s.p_adj.ge(s.p - 1e-12).all()  # correction never makes a p-value smaller


def test_null_p_values_are_calibrated_on_random_labels():
    """2000 independent null cells: paired values whose condition labels are random coin flips.

    With 10 items the sign-flip test is exact (all 1024 flips); the fraction of p < 0.05 must lie
    in the 3-s.d. binomial band around its exact size (25/512 for a two-sided test on 10 items).
    """
    g = torch.Generator().manual_seed(7)
    n, cells = 10, 2000
    a, b = torch.randn(n, cells, generator=g), torch.randn(n, cells, generator=g) + 2.0
    labels = torch.randint(0, 2, (n, cells), generator=g).bool()
    d = torch.where(labels, a - b, b - a)  # random labels: the paired difference has no sign
    s = cell_stats(d, n_perm=1024, n_boot=50, correction="none")
    assert s.settings["exact"]
    size = 25 / 512
    frac = (s.p < 0.05).double().mean().item()
    lo, hi = _binomial_band(cells, size)
    assert lo <= frac <= hi, frac


def test_monte_carlo_p_values_are_calibrated():
    """30 items (2**30 flips: Monte Carlo), 300 seeded null problems, heavy-tailed symmetric noise."""
    hits = 0
    reps = 300
    for seed in range(reps):
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(30, 1, generator=g) ** 3  # symmetric, heavy tails
        s = cell_stats(x, n_perm=999, n_boot=20, correction="none", seed=seed)
        assert not s.settings["exact"]
        hits += int(s.p.item() < 0.05)
    lo, hi = _binomial_band(reps, 0.05)
    assert lo * reps <= hits <= hi * reps, hits


def test_max_t_controls_family_wise_error_on_correlated_null_grids():
    reps, hits = 150, 0
    for seed in range(reps):
        g = torch.Generator().manual_seed(500 + seed)
        e = torch.randn(15, 24, generator=g)
        x = (e + e.roll(1, 1) + e.roll(2, 1)) / 3  # neighbouring cells correlated, like adjacent layers
        s = cell_stats(x, n_perm=1000, n_boot=20, seed=seed)
        hits += int(s.significant().any())
    lo, hi = _binomial_band(reps, 0.05)
    assert hits <= hi * reps, hits


def test_bootstrap_interval_covers_the_true_mean():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(40, 500, generator=g) + 0.3
    s = cell_stats(x, n_boot=1000, n_perm=200)
    cover = ((s.ci_low <= 0.3) & (0.3 <= s.ci_high)).double().mean().item()
    assert 0.90 <= cover <= 0.98, cover


def test_benjamini_hochberg_by_hand():
    p = torch.tensor([0.01, 0.04, 0.03, 0.2])
    q = benjamini_hochberg(p)
    assert torch.allclose(q, torch.tensor([0.04, 0.16 / 3, 0.16 / 3, 0.2], dtype=torch.float64))


def test_round_trip_and_masking():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 3, 4, generator=g)
    x[:, 0, 0] += 3
    s = cell_stats(x, n_boot=100, n_perm=4096)
    t = CellStats.from_dict(s.to_dict())
    for k in CellStats.FIELDS:
        assert torch.allclose(getattr(s, k).double(), getattr(t, k), equal_nan=True)
    m = s.masked()
    assert not math.isnan(m[0, 0].item()) and m.isnan().sum().item() == int((~s.significant()).sum())


def test_bad_input_is_refused():
    with pytest.raises(StatsError, match="no items"):
        cell_stats(torch.zeros(0, 3))
    with pytest.raises(StatsError, match="correction"):
        cell_stats(torch.zeros(4, 3), correction="bonferroni")
