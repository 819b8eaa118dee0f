"""Per-cell statistics for dataset sweeps: mean, standard error, bootstrap CI, sign-flip p-values.

Design note
-----------
Every dataset sweep (causal traces, knockouts, patching over prompt pairs, probes) keeps one
record per item (a fact, a prompt pair, an example) in ``items.jsonl`` through
:class:`interp.sweep.Checkpoint`, and reports a *grid* of cells (kind × token category × layer,
source set × layer, site × layer × category, component × layer).  :func:`cell_stats` turns the
per-item values ``x [item, *cells]`` into, per cell:

* ``mean`` and ``se`` (sample std / √n over the items that have the cell; NaN = item lacks it);
* ``ci_low`` / ``ci_high``: a **percentile bootstrap** interval over items (resampling whole items,
  so the dependence between the cells of one item is kept), ``n_boot`` resamples, seeded;
* ``p``: a two-sided **sign-flip permutation** p-value of H0 "the per-item values are symmetric
  around ``null``" (for paired effects: the intervention does nothing on average).  The statistic
  is the one-sample t; with ``n`` items all ``2**n`` sign vectors are enumerated when that is at
  most ``n_perm`` (an exact test), otherwise ``n_perm`` random flips plus the observed one,
  ``p = (1 + #{|t*| ≥ |t|}) / (1 + n_perm)`` (valid at every α, never zero);
* ``p_adj``: the p-value corrected for testing every cell of the grid.

Correction across the grid — default ``"maxT"``, the single-step max-statistic method of
Westfall & Young (1993): the same sign flips are applied to every cell of an item, so the
permutation distribution of ``max_cells |t*|`` carries the grid's real dependence (neighbouring
layers and tokens are strongly correlated), and ``p_adj(c) = P(max |t*| ≥ |t_c|)`` controls the
family-wise error rate under any such dependence (sign-flip invariance gives subset pivotality)
while being far less conservative than Bonferroni on correlated cells.  ``"bh"``
(Benjamini–Hochberg, false-discovery rate; valid under independence or positive dependence) and
``"none"`` are options.  A cell is *significant* when ``p_adj < alpha``; figures can blank the
others with :meth:`CellStats.masked`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import InterpError

CORRECTIONS = ("maxT", "bh", "none")


class StatsError(InterpError, ValueError):
    """Per-item values that cannot be summarised (no items, a bad setting)."""


@dataclass
class CellStats:
    """Statistics of every cell of a grid; each tensor has the grid's shape."""

    mean: Tensor
    se: Tensor
    ci_low: Tensor
    ci_high: Tensor
    p: Tensor
    p_adj: Tensor
    n: Tensor
    settings: dict = field(default_factory=dict)

    FIELDS = ("mean", "se", "ci_low", "ci_high", "p", "p_adj", "n")

    def significant(self, alpha: float | None = None) -> Tensor:
        """Boolean grid: corrected p-value below ``alpha`` (default: the one the stats were made with)."""
        a = self.settings.get("alpha", 0.05) if alpha is None else alpha
        return self.p_adj < a

    def masked(self, values: Tensor | None = None, alpha: float | None = None) -> Tensor:
        """``values`` (default the means) with non-significant cells set to NaN (blank in a heatmap)."""
        v = (self.mean if values is None else torch.as_tensor(values)).clone().float()
        v[~self.significant(alpha)] = float("nan")
        return v

    def to_dict(self) -> dict:
        """Nested lists (JSON), plus the settings."""
        out = {k: _nan_to_none(getattr(self, k).tolist()) for k in self.FIELDS}
        out["settings"] = dict(self.settings)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "CellStats":
        """Inverse of :meth:`to_dict` (``None`` back to NaN)."""
        return cls(**{k: torch.tensor(_none_to_nan(d[k]), dtype=torch.float64) for k in cls.FIELDS},
                   settings=dict(d.get("settings", {})))

    def select(self, index) -> "CellStats":
        """The statistics of a sub-grid (``index`` applies to every field)."""
        return CellStats(*(getattr(self, k)[index] for k in self.FIELDS), settings=dict(self.settings))


def significant_cells(stats: dict, keys: tuple, n: int, alpha: float | None = None) -> list[bool]:
    """Per cell of one row of a sweep result's saved ``stats`` (``stats[k1][k2]...["p_adj"]``): is the
    corrected p-value below ``alpha`` (default: the sweep's own)?  All ``False`` where the row has no
    statistics (an empty category, a result saved before statistics existed)."""
    a = stats.get("settings", {}).get("alpha", 0.05) if alpha is None else alpha
    st = stats
    for k in keys:
        st = st.get(k) if isinstance(st, dict) else None
    return [False] * n if not st else [p is not None and p < a for p in st["p_adj"]]


def _nan_to_none(x):
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _none_to_nan(x):
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return float("nan") if x is None else x


def _t_stats(S: Tensor, Q: Tensor, n: Tensor) -> Tensor:
    """One-sample t from sums ``S`` and sums of squares ``Q`` over ``n`` items (broadcast)."""
    m = S / n
    var = ((Q - n * m * m) / (n - 1)).clamp_min(0)
    se = (var / n).sqrt()
    tiny = 1e-12 * (Q / n).sqrt().clamp_min(1e-30)
    return torch.where(se > tiny, m / se.clamp_min(1e-300), torch.where(m.abs() > tiny, m.sign() * 1e12, 0.0))


def _flips(n: int, n_perm: int, gen: torch.Generator) -> tuple[Tensor, bool]:
    """Sign vectors [B, n]: all 2**n when that fits in ``n_perm`` (exact), else ``n_perm`` random ones."""
    if n <= 20 and 2 ** n <= n_perm:
        codes = torch.arange(2 ** n)
        bits = (codes[:, None] >> torch.arange(n)[None]) & 1
        return (1 - 2 * bits).double(), True
    return (torch.randint(0, 2, (n_perm, n), generator=gen) * 2 - 1).double(), False


def cell_stats(x: Float[Tensor, "item *cells"], *, null: float = 0.0, n_boot: int = 2000,
               n_perm: int = 10000, level: float = 0.95, correction: str = "maxT", alpha: float = 0.05,
               seed: int = 0, chunk: int = 1000) -> CellStats:
    """Mean, s.e., bootstrap CI, sign-flip p-value and grid-corrected p-value of every cell.

    Args:
        x: one row per item (fact, pair, example); NaN where an item has no value for a cell.
        null: the value H0 centres the per-item values on (0 for effects).
        n_boot / n_perm: bootstrap resamples / random sign flips (exact enumeration when
            ``2**n ≤ n_perm``).
        correction: ``"maxT"`` (Westfall–Young, FWER), ``"bh"`` (Benjamini–Hochberg, FDR) or ``"none"``.
        seed: the bootstrap and the flips are drawn from ``torch.Generator().manual_seed(seed)``.
    """
    if correction not in CORRECTIONS:
        raise StatsError(f"unknown correction {correction!r}; choose one of: {', '.join(CORRECTIONS)}")
    if not 0 < level < 1 or not 0 < alpha < 1:
        raise StatsError(f"level and alpha must lie in (0, 1), not {level} and {alpha}")
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() == 0 or x.shape[0] == 0:
        raise StatsError("no items to summarise: the sweep has no finished item yet")
    shape = x.shape[1:]
    X = x.reshape(x.shape[0], -1) - null  # item cell
    ok = ~X.isnan()
    X0 = torch.where(ok, X, torch.zeros((), dtype=X.dtype))
    okd = ok.double()
    n = okd.sum(0)  # cell
    nn = n.clamp_min(1)
    S, Q = X0.sum(0), (X0 * X0).sum(0)
    mean = S / nn + null
    var = ((Q - S * S / nn) / (n - 1).clamp_min(1)).clamp_min(0)
    se = (var / nn).sqrt()
    gen = torch.Generator().manual_seed(seed)
    N = X.shape[0]
    # bootstrap: multinomial item weights, means as matrix products
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    boots = []
    for b0 in range(0, n_boot, chunk):
        b = min(chunk, n_boot - b0)
        idx = torch.randint(0, N, (b, N), generator=gen)
        W = torch.zeros(b, N, dtype=torch.float64).scatter_add_(1, idx, torch.ones(b, N, dtype=torch.float64))
        boots.append((W @ X0) / (W @ okd))
    B = torch.cat(boots)  # boot cell (NaN where a resample has no item for the cell)
    ci_low = B.nanquantile(lo_q, dim=0) + null
    ci_high = B.nanquantile(hi_q, dim=0) + null
    # sign flips: Q is invariant, only the sums change
    t_obs = _t_stats(S, Q, nn)
    F, exact = _flips(N, n_perm, gen)
    ge = torch.zeros_like(S)
    max_ge = torch.zeros_like(S)
    a_obs = t_obs.abs() * (1 - 1e-9)  # ties count as "at least as extreme"
    for b0 in range(0, F.shape[0], chunk):
        T = _t_stats(F[b0:b0 + chunk] @ X0, Q, nn).abs()  # flip cell
        T = torch.where(n > 1, T, torch.zeros((), dtype=T.dtype))
        ge += (T >= a_obs).double().sum(0)
        mx = T.amax(1, keepdim=True)
        max_ge += (mx >= a_obs).double().sum(0)
    total = F.shape[0]
    if exact:
        p, p_max = ge / total, max_ge / total
    else:
        p, p_max = (1 + ge) / (1 + total), (1 + max_ge) / (1 + total)
    p = torch.where(n > 1, p, torch.ones_like(p))
    if correction == "maxT":
        p_adj = torch.where(n > 1, p_max, torch.ones_like(p))
    elif correction == "bh":
        p_adj = benjamini_hochberg(p)
    else:
        p_adj = p.clone()
    settings = {"n_items": N, "null": null, "n_boot": n_boot, "level": level, "ci": "percentile bootstrap over items",
                "test": "two-sided sign-flip permutation of the one-sample t",
                "n_perm": total, "exact": exact, "correction": correction, "alpha": alpha, "seed": seed,
                "n_cells": int(S.numel())}
    r = [t.reshape(shape) for t in (mean, se, ci_low, ci_high, p, p_adj, n)]
    return CellStats(*r, settings=settings)


def benjamini_hochberg(p: Tensor) -> Tensor:
    """Benjamini–Hochberg adjusted p-values (q-values) of a flat or shaped tensor."""
    flat = p.flatten().double()
    m = flat.numel()
    order = flat.argsort()
    ranked = flat[order] * m / torch.arange(1, m + 1, dtype=torch.float64)
    adj = ranked.flip(0).cummin(0).values.flip(0).clamp(max=1.0)
    out = torch.empty_like(flat)
    out[order] = adj
    return out.reshape(p.shape)
