"""AtP vs AtP* vs real activation patching over many prompt pairs (Kramár et al. 2024, section 5).

Design note
-----------
For every prompt pair (:func:`interp.mediation.pairs.subject_swap_pairs`) the sweep runs real
activation patching (denoising, logit difference) and every attribution method of
:data:`interp.mediation.attribution.METHODS` on the same cells, and keeps both grids per pair in
``items.jsonl`` (:class:`interp.sweep.Checkpoint`: a killed sweep resumes).  Positions before the
first token where the two prompts differ are left out: there the two runs are identical, every
method is exactly 0, and the ties would only inflate the rank correlation.

:class:`AttributionValidationResult` summarises them:

* **Spearman per site**: rank correlation of ``|estimate|`` with ``|effect|`` per pair (the size of
  a node's effect is Kramár's target; GradDrop estimates are magnitudes), and of the signed
  values for the signed methods; mean over pairs with a bootstrap 95% CI and, for each method, a
  sign-flip test of its per-pair difference to AtP (:func:`interp.stats.cell_stats`).
* **Cost to recall** (Kramár's verification cost): cells of all sites of a pair are visited in
  order of decreasing ``|estimate|`` and really patched; for the top-``k`` true effects, the
  number of patches needed to have found them all (:func:`~interp.mediation.attribution.cost_to_recall`),
  mean over pairs; an oracle needs ``k``.
* **QK-fix cells**: the cells where the QK fix removes most of AtP's error, with the true effect,
  AtP and AtP + QK — where a saturated softmax hid an effect from the gradient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..results import Result
from .attribution import METHOD_TITLES, METHODS, attribution_patching, cost_to_recall, spearman
from .pairs import PromptPair

DEFAULT_SITES = ("resid_pre", "attn_out", "mlp_out")


@dataclass
class AttributionValidationResult(Result):
    """Per-site Spearman, cost-to-recall curves and QK-fix cells of attribution methods vs real patching."""

    stem = "atp_validation"

    sites: list[str]
    methods: list[str]
    n_pairs: int
    pairs: list[dict]  # id, clean, corrupt, answer, wrong, n_cells
    spearman: dict  # "magnitude"|"signed" -> method -> site -> CellStats dict (mean, ci, p vs AtP ...)
    cost: dict  # method -> {"k": [...], "mean": [...], "ci_low": [...], "ci_high": [...]}
    qk_cells: list[dict]  # the cells the QK fix corrects most
    seconds: dict  # "patching" and each method: total seconds over pairs
    n_cells: int = 0
    settings: dict = field(default_factory=dict)
    model: str = ""

    def figure(self):
        """Spearman per site, cost-to-recall curves and the QK-fix cells (:func:`validation_figure`)."""
        return validation_figure(self)


def _grid_rows(t: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Cells of a [layer, pos(, unit)] grid at the kept position indices, flattened."""
    return t[:, keep].flatten()


def validate_attribution(model, pairs: Sequence[PromptPair], out_dir: str | Path, *,
                         sites: Sequence[str] = DEFAULT_SITES, methods: Sequence[str] = tuple(METHODS),
                         heads_last_only: bool = True, k_max: int = 50, n_qk_cells: int = 6,
                         max_rows: int | None = None, progress: bool = True) -> AttributionValidationResult:
    """Run real patching and every attribution method on each pair; summarise (see the module note).

    ``sites`` may include ``head``; with ``heads_last_only`` heads are patched at the last position
    only (30 × 9 cells per pair on the default model instead of 30 × 9 × tokens).
    """
    from ..sweep import Checkpoint
    from .patching import activation_patching

    sites = list(sites)
    methods = list(methods)
    ck = Checkpoint(out_dir, {"method": "attribution validation", "model": model.name, "sites": sites,
                              "methods": methods, "heads_last_only": heads_last_only,
                              "metric": "logit_diff", "direction": "denoise"})
    for pr in ck.pending(pairs, lambda p: p.id, progress=progress, desc="pairs", unit="pair"):
        ta, tb = (model.tokenize(t).token_ids(0) for t in (pr.clean, pr.corrupt))
        first = next(i for i, (x, y) in enumerate(zip(ta, tb)) if x != y)
        n = len(ta)
        rec = {"pair": pr.to_dict(), "first_diff": first, "n_tokens": n, "effect": {}, "estimates": {},
               "seconds": {}}
        kw = dict(answer=pr.answer, wrong=pr.wrong, positions=list(range(first, n)))
        for group in _site_groups(sites, heads_last_only, n):
            t0 = time.perf_counter()
            res = activation_patching(model, pr.clean, pr.corrupt, sites=group["sites"], max_rows=max_rows,
                                      **{**kw, "positions": group.get("positions", kw["positions"])})
            rec["seconds"]["patching"] = rec["seconds"].get("patching", 0.0) + time.perf_counter() - t0
            rec["clean_metric"], rec["corrupt_metric"] = res.clean_metric, res.corrupt_metric
            for s in group["sites"]:
                rec["effect"][s] = res.effect(s).tolist()
            for m in methods:
                t0 = time.perf_counter()
                at = attribution_patching(model, pr.clean, pr.corrupt, sites=group["sites"], method=m,
                                          **{**kw, "positions": group.get("positions", kw["positions"])})
                rec["seconds"][m] = rec["seconds"].get(m, 0.0) + time.perf_counter() - t0
                rec["estimates"].setdefault(m, {}).update({s: at.grid(s).tolist() for s in group["sites"]})
        ck.add(pr.id, rec)
    recs = [ck.done[p.id] for p in pairs if p.id in ck]
    return summarise_validation(recs, sites, methods, k_max=k_max, n_qk_cells=n_qk_cells, model_name=model.name)


def _site_groups(sites, heads_last_only: bool, n: int) -> list[dict]:
    grid = [s for s in sites if s != "head"]
    out = [{"sites": grid}] if grid else []
    if "head" in sites:
        out.append({"sites": ["head"], **({"positions": [n - 1]} if heads_last_only else {})})
    return out


def summarise_validation(recs: list[dict], sites, methods, *, k_max: int = 50, n_qk_cells: int = 6,
                         model_name: str = "") -> AttributionValidationResult:
    """Spearman statistics, cost-to-recall curves and QK-fix cells from the per-pair records."""
    from ..stats import cell_stats

    if not recs:
        from ..stats import StatsError
        raise StatsError("no finished pair to summarise")
    signed = [m for m in methods if not METHODS[m][1]]
    rho = {"magnitude": {m: [] for m in methods}, "signed": {m: [] for m in signed}}
    costs = {m: [] for m in methods}
    cells, n_cells = [], 0
    for r in recs:
        eff = {s: torch.tensor(r["effect"][s]) for s in sites}
        allt = torch.cat([eff[s].flatten() for s in sites])
        n_cells = max(n_cells, allt.numel())
        for m in methods:
            est = {s: torch.tensor(r["estimates"][m][s]) for s in sites}
            rho["magnitude"][m].append([spearman(est[s].abs(), eff[s].abs()) for s in sites])
            if m in rho["signed"]:
                rho["signed"][m].append([spearman(est[s], eff[s]) for s in sites])
            alle = torch.cat([est[s].flatten() for s in sites])
            c = cost_to_recall(alle, allt, k_max)
            costs[m].append(torch.cat([c, torch.full((k_max - len(c),), float("nan"), dtype=c.dtype)]))
        if "atp" in methods and "atp+qk" in methods:
            cells += _qk_gains(r, sites)
    spear = {}
    for kind, per in rho.items():
        spear[kind] = {}
        for m, rows in per.items():
            x = torch.tensor(rows, dtype=torch.float64)  # pair site
            st = cell_stats(x, null=0.0, correction="none", n_perm=20000, seed=0)
            d = {"per_site": {s: {"mean": float(st.mean[i]), "ci": [float(st.ci_low[i]), float(st.ci_high[i])]}
                              for i, s in enumerate(sites)}, "per_pair": x.tolist()}
            if m != "atp" and "atp" in per:
                diff = x - torch.tensor(per["atp"], dtype=torch.float64)
                sd = cell_stats(diff, correction="maxT", n_perm=20000, seed=1)
                for i, s in enumerate(sites):
                    d["per_site"][s].update({"diff_vs_atp": float(sd.mean[i]),
                                             "diff_ci": [float(sd.ci_low[i]), float(sd.ci_high[i])],
                                             "p_vs_atp": float(sd.p[i]), "p_adj_vs_atp": float(sd.p_adj[i])})
            spear[kind][m] = d
    cost = {}
    for m, cs in costs.items():
        st = cell_stats(torch.stack(cs), correction="none", n_perm=100, n_boot=2000, seed=2)
        cost[m] = {"k": list(range(1, k_max + 1)), "mean": st.mean.tolist(), "ci_low": st.ci_low.tolist(),
                   "ci_high": st.ci_high.tolist()}
    cells.sort(key=lambda c: -c["gain"])
    secs = {}
    for r in recs:
        for k, v in r["seconds"].items():
            secs[k] = secs.get(k, 0.0) + v
    pairs = [{**{k: r["pair"][k] for k in ("id", "clean", "corrupt", "answer", "wrong")},
              "first_diff": r["first_diff"], "clean_metric": r["clean_metric"],
              "corrupt_metric": r["corrupt_metric"]} for r in recs]
    return AttributionValidationResult(list(sites), list(methods), len(recs), pairs, spear, cost,
                                       cells[:n_qk_cells], secs, n_cells,
                                       {"k_max": k_max, "spearman": "per pair, cells at positions from the first "
                                        "differing token; mean over pairs, 95% percentile bootstrap CI",
                                        "test_vs_atp": "sign-flip permutation of per-pair differences, maxT "
                                        "over sites", "cost": "cells of all sites pooled per pair"},
                                       model_name)


def _qk_gains(r: dict, sites) -> list[dict]:
    """Cells where AtP + QK is much closer to the true effect than AtP (absolute error removed)."""
    out = []
    toks_first = r["first_diff"]
    for s in sites:
        e = torch.tensor(r["effect"][s])
        a = torch.tensor(r["estimates"]["atp"][s])
        q = torch.tensor(r["estimates"]["atp+qk"][s])
        gain = (a - e).abs() - (q - e).abs()
        flat = int(gain.flatten().argmax())
        idx = list(torch.unravel_index(torch.tensor(flat), gain.shape))
        cell = {"pair": r["pair"]["id"], "site": s, "layer": int(idx[0]),
                "position": toks_first + int(idx[1]) if s != "head" or e.shape[1] > 1 else r["n_tokens"] - 1,
                "effect": float(e[tuple(idx)]), "atp": float(a[tuple(idx)]), "atp+qk": float(q[tuple(idx)]),
                "gain": float(gain.flatten()[flat]), "clean": r["pair"]["clean"], "corrupt": r["pair"]["corrupt"]}
        if s == "head":
            cell["head"] = int(idx[2])
        if "atp*" in r["estimates"]:
            cell["atp*"] = float(torch.tensor(r["estimates"]["atp*"][s])[tuple(idx)])
        out.append(cell)
    return out


def validation_figure(res: AttributionValidationResult):
    """(a) Spearman of |estimate| vs |effect| per site; (b) cost-to-recall; (c) the QK-fix cells."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures import COLORS, style

    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, column_widths=[0.3, 0.35, 0.35],
                        subplot_titles=["Spearman |estimate| vs |effect| (mean, 95% CI)",
                                        "Cost to recall the top-k true effects",
                                        "Cells the QK fix corrects (logit diff)"])
    for i, m in enumerate(res.methods):
        d = res.spearman["magnitude"][m]["per_site"]
        y = [d[s]["mean"] for s in res.sites]
        fig.add_trace(go.Bar(x=res.sites, y=y, name=METHOD_TITLES[m], marker_color=COLORS[i % len(COLORS)],
                             legendgroup=m,
                             error_y=dict(type="data", symmetric=False,
                                          array=[d[s]["ci"][1] - d[s]["mean"] for s in res.sites],
                                          arrayminus=[d[s]["mean"] - d[s]["ci"][0] for s in res.sites])), 1, 1)
        c = res.cost[m]
        col = COLORS[i % len(COLORS)]
        fig.add_trace(go.Scatter(x=c["k"] + c["k"][::-1], y=c["ci_high"] + c["ci_low"][::-1], fill="toself",
                                 line=dict(width=0), fillcolor=col, opacity=0.15, hoverinfo="skip",
                                 showlegend=False, legendgroup=m), 1, 2)
        fig.add_trace(go.Scatter(x=c["k"], y=c["mean"], mode="lines", line=dict(color=col, width=2.5),
                                 name=METHOD_TITLES[m], showlegend=False, legendgroup=m), 1, 2)
    k = res.cost[res.methods[0]]["k"]
    fig.add_trace(go.Scatter(x=k, y=k, mode="lines", line=dict(color="black", dash="dot", width=1),
                             name="oracle"), 1, 2)
    fig.update_yaxes(type="log", title_text=f"real patches needed (of {res.n_cells} cells)", row=1, col=2)
    fig.update_xaxes(title_text="k (largest true |effects|)", row=1, col=2)
    fig.update_yaxes(title_text="Spearman ρ", row=1, col=1)
    if res.qk_cells:
        labels = [f"{c['pair']} {c['site']} L{c['layer']}"
                  + (f" H{c['head']}" if "head" in c else f" t{c['position']}") for c in res.qk_cells]
        for j, (key, name) in enumerate([("effect", "real patching"), ("atp", "AtP"), ("atp+qk", "AtP + QK fix")]):
            fig.add_trace(go.Bar(y=labels, x=[c[key] for c in res.qk_cells], orientation="h", name=name,
                                 marker_color=["#222222", COLORS[0], COLORS[1]][j], showlegend=key == "effect",
                                 customdata=[[c["clean"], c["corrupt"]] for c in res.qk_cells],
                                 hovertemplate="%{y}: %{x:.3f}<br>%{customdata[0]}<br>vs %{customdata[1]}"
                                               "<extra>" + name + "</extra>"), 1, 3)
        fig.update_xaxes(title_text="effect on the logit difference", row=1, col=3)
        fig.update_yaxes(autorange="reversed", row=1, col=3)
    fig.update_layout(barmode="group")
    return style(fig, title=(f"AtP vs AtP* vs activation patching over {res.n_pairs} known_1000 subject swaps — "
                             f"{res.model}"), width=1650, height=560)
