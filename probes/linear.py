"""Logistic-regression probes per layer × component, with controls (Zhao et al. 2024).

**Solver.**  One batched proximal-gradient solver (FISTA, Beck & Teboulle 2009) fits *all*
layers and *all* regularisation settings of a component at once: weights ``[layer, grid, d]``,
mean binary cross-entropy + ``λ₂/2‖w‖²`` (L2) or + ``λ₁‖w‖₁`` (L1, soft-thresholding), the
bias unpenalised, step ``1/Lipschitz`` from a power iteration per layer.  Both penalties are
convex, so this reaches the same optimum as scikit-learn's ``LogisticRegression`` (tested),
and a sweep of 30 layers × 6 settings is one tensor program instead of 180 solver calls
(``benchmarks/bench_probes.py`` prints the ratio; it runs single-threaded by default because
on a loaded 2-core machine two torch threads ran 4.8× and 18× slower than one in two runs).  The
paper trains with Adam and L1 (λ = 6e-4); we choose the penalty *and* λ per layer on a
validation split (grid ``LAMBDAS`` for each of L1, L2) and report test numbers.

Features are standardised with the training rows' mean and standard deviation; the saved
weights are folded back into activation space (``w/σ``, ``b − Σ w μ/σ``), so a
:class:`LinearProbe` applies to raw activations of new prompts and its direction can be added
to ``resid_post`` through :class:`interp.interventions.InterventionPlan` (:meth:`steering_plan`).

**Controls.**  Each split also fits a probe on *random labels assigned per group* (a control
task in the sense of Hewitt & Liang 2019: a probe that memorises questions does as well on it,
one that reads a real signal does not); selectivity = accuracy − control accuracy.  The majority
baseline is the test accuracy of always predicting the training majority class.

**Intervals.**  Every number is a mean over ``n_seeds`` grouped splits (different groups in
test each time) with a 95% Student-t interval of the mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import DatasetError

from .splits import Split, check_disjoint, grouped_split

#: regularisation strengths tried for each penalty (per-example-mean loss scale)
LAMBDAS = (1e-3, 1e-2, 1e-1)
PENALTIES = ("l1", "l2")


class ProbeLabelError(DatasetError):
    """The labels of a probe cannot train it: one class only, or too few rows on a side."""


def check_labels(y: Sequence[int] | Tensor, where: str = "labels") -> None:
    """Raise :class:`ProbeLabelError` unless both classes 0 and 1 occur."""
    t = torch.as_tensor(y)
    vals = sorted(set(t.tolist()))
    if len(vals) < 2:
        raise ProbeLabelError(
            f"{where}: only one class present ({vals[0] if vals else 'no rows'}; {len(t)} rows) — a "
            f"probe needs both classes. Add examples (raise --limit), use another task, or check "
            f"the label counts (the source task needs both context- and memory-answer examples)")
    if not set(vals) <= {0, 1}:
        raise ProbeLabelError(f"{where}: labels must be 0/1, got {vals[:5]}")


# ----------------------------------------------------------------------------- solver
def _lipschitz(X: Float[Tensor, "L n d"], iters: int = 30) -> Float[Tensor, "L"]:
    """Largest eigenvalue of XᵀX/n per layer (power iteration)."""
    n = X.shape[1]
    v = torch.randn(X.shape[0], X.shape[2], generator=torch.Generator().manual_seed(0), dtype=X.dtype)
    v = v / v.norm(dim=-1, keepdim=True)
    for _ in range(iters):
        u = torch.einsum("lnd,ld->ln", X, v)
        v = torch.einsum("lnd,ln->ld", X, u)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    u = torch.einsum("lnd,ld->ln", X, v)
    return (u * u).sum(-1) / n


@torch.no_grad()
def fit_logistic(X: Float[Tensor, "L n d"], y: Float[Tensor, "n"], l1: Float[Tensor, "G"],
                 l2: Float[Tensor, "G"], *, iters: int = 300, tol: float = 1e-5, threads: int | None = 1
                 ) -> tuple[Float[Tensor, "L G d"], Float[Tensor, "L G"]]:
    """Fit L×G logistic regressions (every layer × every penalty setting) with FISTA.

    Minimises ``mean BCE(σ(Xw+b), y) + l2/2‖w‖² + l1‖w‖₁`` for each layer l and setting g.
    ``threads``: torch intra-op threads during the fit (default 1; None keeps the setting).
    """
    L, n, d = X.shape
    G = l1.shape[0]
    if threads is not None and torch.get_num_threads() != threads:
        # measured (benchmarks/bench_probes.py): on a busy 2-core machine two intra-op threads
        # stall on each other (4.8x-18x slower than one); on an idle one they gain at most 2x
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fit_logistic(X, y, l1, l2, iters=iters, tol=tol, threads=None)
        finally:
            torch.set_num_threads(prev)
    X = X.float()
    y = y.float()
    lip = 0.25 * (_lipschitz(X) + 1.0)  # +1: the bias column
    step = 1.0 / (lip[:, None] + l2[None, :])  # L G
    w = torch.zeros(L, G, d)
    b = torch.zeros(L, G)
    wz, bz = w.clone(), b.clone()
    t = 1.0
    thr = (step * l1[None, :])[..., None]
    for it in range(iters):
        z = torch.einsum("lnd,lgd->lgn", X, wz) + bz[..., None]
        r = (torch.sigmoid(z) - y) / n  # L G n
        gw = torch.einsum("lgn,lnd->lgd", r, X) + l2[None, :, None] * wz
        gb = r.sum(-1)
        w_new = wz - step[..., None] * gw
        w_new = torch.sign(w_new) * (w_new.abs() - thr).clamp_min(0)
        b_new = bz - step * gb
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        mom = (t - 1) / t_new
        delta = (w_new - w).abs().max()
        wz = w_new + mom * (w_new - w)
        bz = b_new + mom * (b_new - b)
        w, b, t = w_new, b_new, t_new
        if delta < tol:
            break
    return w, b


def auroc(scores: Float[Tensor, "... m"], y: Tensor) -> Float[Tensor, "..."]:
    """Area under the ROC curve (Mann–Whitney U, average ranks for ties) along the last axis."""
    y = torch.as_tensor(y).bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return torch.full(scores.shape[:-1], float("nan"))
    s = scores.float()
    order = s.argsort(-1)
    ranks = torch.empty_like(s)
    ranks.scatter_(-1, order, torch.arange(1, s.shape[-1] + 1, dtype=s.dtype).expand_as(s).contiguous())
    # average ranks of ties
    flat_s, flat_r = s.reshape(-1, s.shape[-1]), ranks.reshape(-1, s.shape[-1])
    for i in range(flat_s.shape[0]):
        u, inv, cnt = torch.unique(flat_s[i], return_inverse=True, return_counts=True)
        if len(u) < flat_s.shape[1]:
            sums = torch.zeros(len(u)).index_add_(0, inv, flat_r[i])
            flat_r[i] = (sums / cnt)[inv]
    ranks = flat_r.reshape(s.shape)
    return (ranks[..., y].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _grid(lambdas=LAMBDAS, penalties=PENALTIES):
    cfg = [(p, lam) for p in penalties for lam in lambdas]
    l1 = torch.tensor([lam if p == "l1" else 0.0 for p, lam in cfg])
    l2 = torch.tensor([lam if p == "l2" else 0.0 for p, lam in cfg])
    return cfg, l1, l2


@dataclass
class SplitFit:
    """Per-layer test numbers of one split, and the chosen probes (activation space)."""

    accuracy: Tensor  # L
    auroc: Tensor  # L
    config: list  # L × (penalty, lambda)
    weight: Tensor  # L d (raw activation space)
    bias: Tensor  # L
    test_correct: Tensor | None = None  # L n_test: the chosen probe is right on that test row


def fit_split(X: Float[Tensor, "L n d"], y: Tensor, split: Split, *, lambdas=LAMBDAS,
              penalties=PENALTIES, iters: int = 200) -> SplitFit:
    """Standardise on train, fit the grid, pick per layer on val (accuracy, then AUROC), test."""
    y = torch.as_tensor(y).float()
    tr, va, te = (torch.tensor(s) for s in (split.train, split.val, split.test))
    check_labels(y[tr].long(), "training split")
    check_labels(y[te].long(), "test split")
    Xtr = X[:, tr].float()
    mu = Xtr.mean(1, keepdim=True)
    sd = Xtr.std(1, keepdim=True).clamp_min(1e-6)
    Z = (X.float() - mu) / sd
    cfg, l1, l2 = _grid(lambdas, penalties)
    w, b = fit_logistic(Z[:, tr], y[tr], l1, l2, iters=iters)
    s_val = torch.einsum("lnd,lgd->lgn", Z[:, va], w) + b[..., None]
    acc_val = ((s_val > 0).float() == y[va]).float().mean(-1)  # L G
    au_val = auroc(s_val, y[va]) if len(set(y[va].tolist())) > 1 else torch.zeros_like(acc_val)
    key = acc_val + 1e-3 * torch.nan_to_num(au_val)
    best = key.argmax(-1)  # L
    Ls = torch.arange(X.shape[0])
    wb, bb = w[Ls, best], b[Ls, best]  # L d, L
    s_te = torch.einsum("lnd,ld->ln", Z[:, te], wb) + bb[:, None]
    correct = ((s_te > 0).float() == y[te]).float()  # L n_test
    acc = correct.mean(-1)
    au = auroc(s_te, y[te])
    w_raw = wb / sd[:, 0]
    b_raw = bb - (wb * mu[:, 0] / sd[:, 0]).sum(-1)
    return SplitFit(acc, au, [list(cfg[int(i)]) for i in best], w_raw, b_raw, correct)


def control_labels(y: Tensor, groups: Sequence[str], seed: int) -> Tensor:
    """Random labels, one per group (a control task), with the class balance of ``y``."""
    g = torch.Generator().manual_seed(10_000 + seed)
    keys = sorted(set(map(str, groups)))
    p = float(torch.as_tensor(y).float().mean())
    per = {k: int(torch.rand(1, generator=g) < p) for k in keys}
    out = torch.tensor([per[str(k)] for k in groups])
    if len(set(out.tolist())) < 2:  # tiny sets: force both classes
        out[0] = 1 - out[0]
    return out


def mean_ci(x: Float[Tensor, "seed ..."], level: float = 0.95) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean, std, and the Student-t interval of the mean over the first axis."""
    x = x.float()
    k = x.shape[0]
    m = x.nanmean(0)
    if k < 2:
        return m, torch.zeros_like(m), m.clone(), m.clone()
    sd = x.std(0)
    from scipy.stats import t as student_t
    h = float(student_t.ppf(0.5 + level / 2, k - 1)) * sd / math.sqrt(k)
    return m, sd, m - h, m + h


def probe_layers(X: Float[Tensor, "L n d"], y: Sequence[int], groups: Sequence[str], *,
                 n_seeds: int = 5, lambdas=LAMBDAS, penalties=PENALTIES, iters: int = 200,
                 control: bool = True) -> dict:
    """Layer-wise probe accuracy / AUROC over ``n_seeds`` grouped splits, with controls.

    Returns a dict of per-seed tensors (``accuracy``, ``auroc``, ``control_accuracy``:
    ``[seed, L]``; ``majority``: ``[seed]``), the chosen configs, split sizes, the probe
    of the first split (``weight [L, d]``, ``bias [L]``, activation space), and per row
    (``row_correct`` / ``row_control`` ``[L, n]``): the fraction of the seeds that tested the row in
    which the probe / the control probe was right (NaN: never in a test split) — the per-item data
    of the statistics over question groups (:func:`summarise`).
    """
    y = torch.as_tensor(list(y)).long()
    check_labels(y, "probe labels")
    if X.shape[1] != len(y) or len(groups) != len(y):
        raise DatasetError(f"{X.shape[1]} activation rows, {len(y)} labels, {len(groups)} groups: "
                           f"they must match")
    acc, au, ctl, maj, cfgs, sizes = [], [], [], [], [], []
    first = None
    L, n = X.shape[0], len(y)
    hits, ctl_hits, tested = torch.zeros(L, n), torch.zeros(L, n), torch.zeros(n)
    ctl_tested = torch.zeros(n)
    for seed in range(n_seeds):
        sp = grouped_split(groups, seed=seed)
        check_disjoint(sp, groups)
        f = fit_split(X, y, sp, lambdas=lambdas, penalties=penalties, iters=iters)
        te = torch.tensor(sp.test)
        hits[:, te] += f.test_correct
        tested[te] += 1
        acc.append(f.accuracy)
        au.append(f.auroc)
        cfgs.append(f.config)
        sizes.append(sp.sizes())
        ytr, yte = y[sp.train], y[sp.test]
        major = int(ytr.float().mean() >= 0.5)
        maj.append(float((yte == major).float().mean()))
        if control:
            yc = control_labels(y, groups, seed)
            try:
                fc = fit_split(X, yc, sp, lambdas=lambdas, penalties=penalties, iters=iters)
                ctl.append(fc.accuracy)
                ctl_hits[:, te] += fc.test_correct
                ctl_tested[te] += 1
            except ProbeLabelError:
                ctl.append(torch.full((X.shape[0],), float("nan")))
        if first is None:
            first = f
    nan = torch.tensor(float("nan"))
    return {"accuracy": torch.stack(acc), "auroc": torch.stack(au),
            "control_accuracy": torch.stack(ctl) if ctl else None, "majority": torch.tensor(maj),
            "configs": cfgs, "split_sizes": sizes, "weight": first.weight, "bias": first.bias,
            "row_correct": torch.where(tested > 0, hits / tested.clamp_min(1), nan),
            "row_control": torch.where(ctl_tested > 0, ctl_hits / ctl_tested.clamp_min(1), nan) if ctl else None}


# ----------------------------------------------------------------------------- saved probes
@dataclass
class LinearProbe:
    """A trained probe in activation space: ``p(y=1|x) = σ(x·w + b)``."""

    weight: Float[Tensor, "d"]
    bias: float
    component: str = "resid"
    layer: int = -1
    penalty: str = ""
    lam: float = 0.0

    @property
    def direction(self) -> Float[Tensor, "d"]:
        """Unit vector along the weight (the probe direction)."""
        return self.weight / self.weight.norm().clamp_min(1e-12)

    def logit(self, acts: Float[Tensor, "n d"]) -> Float[Tensor, "n"]:
        return acts.float() @ self.weight.float() + self.bias

    def predict_proba(self, acts: Float[Tensor, "n d"]) -> Float[Tensor, "n"]:
        return torch.sigmoid(self.logit(acts))

    def predict(self, acts: Float[Tensor, "n d"]) -> Tensor:
        return (self.logit(acts) > 0).long()

    @classmethod
    def fit(cls, X: Float[Tensor, "n d"], y: Sequence[int], groups: Sequence[str] | None = None, *,
            seed: int = 0, lambdas=LAMBDAS, penalties=PENALTIES, iters: int = 500,
            component: str = "resid", layer: int = -1) -> "LinearProbe":
        """Fit one probe, choosing penalty and λ on a (grouped) validation split."""
        y = torch.as_tensor(list(y)).long()
        check_labels(y)
        groups = list(groups) if groups is not None else [str(i) for i in range(len(y))]
        sp = grouped_split(groups, seed=seed)
        f = fit_split(X[None], y, sp, lambdas=lambdas, penalties=penalties, iters=iters)
        p, lam = f.config[0]
        return cls(f.weight[0], float(f.bias[0]), component, layer, p, float(lam))

    def save(self, out_dir: str | Path, name: str = "probe") -> Path:
        """``<name>.safetensors`` (weight, bias) + ``<name>.json`` (metadata)."""
        from safetensors.torch import save_file
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous().float(), "bias": torch.tensor([self.bias])},
                  str(out / f"{name}.safetensors"))
        (out / f"{name}.json").write_text(json.dumps({"component": self.component, "layer": self.layer,
                                                      "penalty": self.penalty, "lambda": self.lam,
                                                      "d": int(self.weight.shape[0])}, indent=1))
        return out / f"{name}.json"

    @classmethod
    def load(cls, out_dir: str | Path, name: str = "probe") -> "LinearProbe":
        from safetensors.torch import load_file

        from interp.errors import ResultMissingError
        out = Path(out_dir)
        if not (out / f"{name}.json").exists():
            raise ResultMissingError(f"no probe {name!r} in {out}: train one with LinearProbe.fit(...).save() "
                                     f"or `interp probe --out {out}`")
        meta = json.loads((out / f"{name}.json").read_text())
        t = load_file(str(out / f"{name}.safetensors"))
        return cls(t["weight"], float(t["bias"][0]), meta["component"], meta["layer"], meta["penalty"],
                   meta["lambda"])

    def steering_plan(self, model, prompts: str | Sequence[str], alpha: float, *, layer: int | None = None,
                      positions: Sequence[int] = (-1,)):
        """An :class:`InterventionPlan` adding ``alpha · direction`` to ``resid_post`` of ``layer``.

        Positive ``alpha`` pushes towards class 1 (e.g. *conflict* / *context answer*).  Run it
        with ``model.run(plan=plan)``.
        """
        from interp.interventions import InterventionPlan
        batch = model.tokenize(prompts)
        plan = InterventionPlan(batch)
        lay = self.layer if layer is None else layer
        vec = (alpha * self.direction).to(model.device, model.dtype)
        for r in range(batch.size):
            plan.add("resid_post", lay, r, list(positions), vec)
        return plan


def group_stats(per_component: dict[str, dict], groups: Sequence[str]) -> dict:
    """Per-cell statistics over question groups (:func:`interp.stats.cell_stats`), cells = component × layer.

    Each group's test accuracy (the mean over its rows of :func:`probe_layers`' ``row_correct``) is
    one item: a bootstrap 95% CI over groups, and the sign-flip test of the group's *selectivity*
    (accuracy − the random-label control's accuracy on the same rows) against 0, maxT-corrected
    over every component and layer.  Groups, not rows, are the unit because splits are grouped
    (rows of one question are not independent).  Empty when the fits carry no per-row data.
    """
    from interp.stats import cell_stats

    comps = [c for c, r in per_component.items() if r.get("row_correct") is not None]
    if not comps:
        return {}
    keys = sorted(set(map(str, groups)))
    gi = torch.tensor([keys.index(str(g)) for g in groups])

    def by_group(rows: Tensor) -> Tensor:  # L n -> G L, NaN-aware means
        ok = ~rows.isnan()
        s = torch.zeros(len(keys), rows.shape[0], dtype=torch.float64).index_add_(
            0, gi, torch.where(ok, rows, 0.0).double().T)
        c = torch.zeros(len(keys), rows.shape[0], dtype=torch.float64).index_add_(0, gi, ok.double().T)
        return torch.where(c > 0, s / c.clamp_min(1), torch.tensor(float("nan"), dtype=torch.float64))

    acc = torch.stack([by_group(torch.as_tensor(per_component[c]["row_correct"], dtype=torch.float64))
                       for c in comps], 1)  # G comp L
    st_acc = cell_stats(acc, null=0.5)
    out = {"settings": {**st_acc.settings, "unit": "question group", "n_groups": len(keys),
                        "p": "selectivity (accuracy - control accuracy on the same group) vs 0"}}
    st_sel = None
    if all(per_component[c].get("row_control") is not None for c in comps):
        ctl = torch.stack([by_group(torch.as_tensor(per_component[c]["row_control"], dtype=torch.float64))
                           for c in comps], 1)
        st_sel = cell_stats(acc - ctl)
    for i, c in enumerate(comps):
        d = {"accuracy_ci_groups": [[float(a), float(b)] for a, b in zip(st_acc.ci_low[i], st_acc.ci_high[i])]}
        if st_sel is not None:
            d.update({"selectivity": st_sel.mean[i].tolist(),
                      "selectivity_ci": [[float(a), float(b)] for a, b in zip(st_sel.ci_low[i], st_sel.ci_high[i])],
                      "p": st_sel.p[i].tolist(), "p_adj": st_sel.p_adj[i].tolist()})
        out[c] = d
    return out


def summarise(per_component: dict[str, dict], layers: Sequence[int], *, task: str, class_counts: dict,
              dataset: str = "", model: str = "", settings: dict | None = None,
              groups: Sequence[str] | None = None):
    """Turn :func:`probe_layers` outputs (one per component) into a :class:`ProbeResult`.

    With the rows' ``groups``, the result also carries :func:`group_stats` in ``stats``.
    """
    from .result import ProbeResult

    comps, best = {}, None
    split_sizes, majority, n_seeds = [], [], 0
    for comp, r in per_component.items():
        acc, au = torch.as_tensor(r["accuracy"]), torch.as_tensor(r["auroc"])
        n_seeds = acc.shape[0]
        m, sd, lo, hi = mean_ci(acc)
        am, _, alo, ahi = mean_ci(au)
        # accuracies live in [0, 1]: a t-interval from 3 seeds can overshoot
        lo, hi, alo, ahi = (t.clamp(0, 1) for t in (lo, hi, alo, ahi))
        d = {"accuracy": m.tolist(), "accuracy_std": sd.tolist(),
             "accuracy_ci": [[float(a), float(b)] for a, b in zip(lo, hi)],
             "auroc": am.tolist(), "auroc_ci": [[float(a), float(b)] for a, b in zip(alo, ahi)],
             "per_seed": {"accuracy": acc.tolist(), "auroc": au.tolist()},
             "configs": r.get("configs")}
        if r.get("control_accuracy") is not None:
            ctl = torch.as_tensor(r["control_accuracy"])
            cm, _, clo, chi = mean_ci(ctl)
            clo, chi = clo.clamp(0, 1), chi.clamp(0, 1)
            d["control_accuracy"] = cm.tolist()
            d["control_accuracy_ci"] = [[float(a), float(b)] for a, b in zip(clo, chi)]
            d["selectivity"] = (m - cm).tolist()
            d["per_seed"]["control_accuracy"] = ctl.tolist()
        comps[comp] = d
        split_sizes = r["split_sizes"]
        majority = torch.as_tensor(r["majority"]).tolist()
        k = int(m.argmax())
        if best is None or float(m[k]) > best["accuracy"]:
            best = {"component": comp, "layer": int(layers[k]), "accuracy": float(m[k]),
                    "accuracy_ci": [float(lo[k]), float(hi[k])], "accuracy_std": float(sd[k]),
                    "auroc": float(am[k]), "auroc_ci": [float(alo[k]), float(ahi[k])],
                    "control_accuracy": d.get("control_accuracy", [None] * len(layers))[k],
                    "selectivity": d.get("selectivity", [None] * len(layers))[k]}
    maj = float(torch.tensor(majority).mean()) if majority else 0.5
    return ProbeResult(task=task, layers=list(layers), components=comps,
                       baselines={"majority": maj, "majority_per_seed": majority, "chance": 0.5},
                       split_sizes=split_sizes, class_counts=class_counts, best=best or {}, n_seeds=n_seeds,
                       dataset=dataset, model=model, settings=settings or {},
                       stats=group_stats(per_component, groups) if groups is not None else {})
