"""``ProbeResult``: layer-wise probe numbers of one task, saved as stable JSON, drawn as in the paper.

``components[c]`` holds, for component ``c`` (``resid``, ``mlp``, ``attn``), lists over
``layers``: ``accuracy``, ``auroc`` (means over seeds), their 95% intervals
(``accuracy_ci`` = ``[[lo, hi], …]``), ``accuracy_std``, the random-label ``control_accuracy``,
``selectivity`` (accuracy − control), and ``per_seed`` arrays.  ``baselines`` has the majority
and chance accuracies, ``split_sizes`` the train/val/test rows of every seed, ``class_counts``
the labels (and, for the source task, how many examples were kept apart).  ``best`` names the
best (component, layer) by mean test accuracy with its interval.  ``stats`` (when the fits kept
per-row outcomes) has the statistics over question groups of :func:`probes.linear.group_stats`:
a bootstrap CI of the accuracy and the maxT-corrected sign-flip p-value of the selectivity.

The figure is Zhao et al.'s Fig. 2: accuracy vs layer, one line per component, with the
interval as a band, plus the control and the majority baseline as dashed lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from interp.results import Result

TASK_TITLES = {"conflict": "conflict vs no conflict", "source": "context answer vs memory answer"}


@dataclass
class ProbeResult(Result):
    stem = "probe"

    task: str
    layers: list[int]
    components: dict
    baselines: dict
    split_sizes: list
    class_counts: dict
    best: dict
    n_seeds: int = 5
    dataset: str = ""
    model: str = ""
    settings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def significant(self, component: str, alpha: float | None = None) -> list[bool]:
        """Per layer: does the probe beat its random-label control after the grid-wide correction?"""
        a = self.stats.get("settings", {}).get("alpha", 0.05) if alpha is None else alpha
        p = self.stats.get(component, {}).get("p_adj")
        return [True] * len(self.layers) if p is None else [v is not None and v < a for v in p]

    def figure(self, metric: str = "accuracy", mask_nonsignificant: bool = False):
        """Accuracy (or AUROC) per layer with its band; with group statistics, layers where the probe
        does not significantly beat its control are hollow markers (hidden with ``mask_nonsignificant``)."""
        import plotly.graph_objects as go

        from interp.figures import COLORS, style

        fig = go.Figure()
        for i, (comp, d) in enumerate(self.components.items()):
            col = COLORS[i % len(COLORS)]
            ci = d.get(f"{metric}_ci")
            if ci:
                lo = [c[0] for c in ci]
                hi = [c[1] for c in ci]
                fig.add_trace(go.Scatter(x=self.layers + self.layers[::-1], y=hi + lo[::-1], fill="toself",
                                         line=dict(width=0), fillcolor=col, opacity=0.18, hoverinfo="skip",
                                         showlegend=False))
            sig = self.significant(comp)
            y = [v if ok or not mask_nonsignificant else None for v, ok in zip(d[metric], sig)]
            fig.add_trace(go.Scatter(x=self.layers, y=y, mode="lines+markers", name=comp,
                                     line=dict(color=col, width=2.5),
                                     marker=dict(size=6, symbol=["circle" if ok else "circle-open" for ok in sig])))
            if metric == "accuracy" and d.get("control_accuracy"):
                fig.add_trace(go.Scatter(x=self.layers, y=d["control_accuracy"], mode="lines",
                                         name=f"{comp} control (random labels)",
                                         line=dict(color=col, width=1, dash="dot")))
        if metric == "accuracy":
            fig.add_hline(y=self.baselines.get("majority", 0.5), line=dict(color="black", dash="dash", width=1),
                          annotation_text="majority", annotation_position="bottom right")
        n = self.class_counts.get("n_rows", "")
        fig.update_xaxes(title="layer")
        fig.update_yaxes(title=f"test {metric} (mean ± 95% CI, {self.n_seeds} grouped splits)", range=[0.2, 1.02])
        from pathlib import Path
        fmt, _, path = self.dataset.partition(":")
        title = (f"Probe {metric}: {TASK_TITLES.get(self.task, self.task)} — {self.model} "
                 f"({n} rows, {fmt} {Path(path).name})")
        if self.stats.get("settings"):
            st = self.stats["settings"]
            title += (f"<br><sub>filled: beats the random-label control over {st['n_groups']} question groups "
                      f"(sign-flip p_adj < {st['alpha']}, {st['correction']})</sub>")
        return style(fig, title=title, width=1000, height=540)

    def summary(self) -> dict:
        b = self.best
        return {"task": self.task, "best_component": b.get("component"), "best_layer": b.get("layer"),
                "best_accuracy": b.get("accuracy"), "best_accuracy_ci": b.get("accuracy_ci"),
                "best_auroc": b.get("auroc"), "control_accuracy_at_best": b.get("control_accuracy"),
                "majority": self.baselines.get("majority"), "class_counts": self.class_counts}


def peak_shape(res: ProbeResult, metric: str = "accuracy", chance: float = 0.5) -> dict:
    """Where each component's probe peaks, for a comparison with a paper's layer profile.

    Per component: the best layer, its mean and 95% interval, its relative depth
    ``layer / (n_layers - 1)``, whether it lies in the middle third of the layers (Zhao et al.'s
    "middle layers"), and how many layers have the whole interval above ``chance``.
    """
    L = len(res.layers)
    out = {}
    for comp, d in res.components.items():
        v = d[metric]
        k = max(range(L), key=lambda i: -1.0 if v[i] is None else v[i])
        ci = d.get(f"{metric}_ci") or [[v[i], v[i]] for i in range(L)]
        out[comp] = {"layer": res.layers[k], metric: v[k], "ci": list(ci[k]),
                     "depth": res.layers[k] / max(1, res.layers[-1]),
                     "middle_third": L / 3 <= k < 2 * L / 3,
                     "layers_above_chance": sum(1 for lo, _ in ci if lo is not None and lo > chance)}
    return out


def conflict_figure(results: dict[str, ProbeResult], *, metrics=("accuracy", "auroc"), chance: float = 0.5,
                    title: str | None = None):
    """Zhao et al.'s Fig. 2 for several datasets side by side: one column per dataset, one row per
    metric; accuracy (AUROC) vs layer per component with its 95% interval as a band, the chance line,
    and the middle third of the layers shaded."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp.figures import COLORS, style

    names = list(results)
    heads = [f"{n} ({r.class_counts.get('n_rows', '?')} rows, {r.class_counts.get('n_examples', '?')} examples)"
             for n, r in results.items()]
    fig = make_subplots(rows=len(metrics), cols=len(names), shared_xaxes=True, shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.08, subplot_titles=heads)
    comps = list(dict.fromkeys(c for r in results.values() for c in r.components))
    from interp.arch import COMPONENTS
    for col, name in enumerate(names, 1):
        r = results[name]
        L = len(r.layers)
        for row, metric in enumerate(metrics, 1):
            fig.add_vrect(x0=r.layers[0] + L / 3 - 0.5, x1=r.layers[0] + 2 * L / 3 - 0.5, fillcolor="#bbbbbb",
                          opacity=0.15, line_width=0, row=row, col=col, exclude_empty_subplots=False)
            fig.add_hline(y=chance, line=dict(color="black", dash="dash", width=1), row=row, col=col,
                          exclude_empty_subplots=False)
            for comp, d in r.components.items():
                c = COLORS[comps.index(comp) % len(COLORS)]
                ci = d.get(f"{metric}_ci")
                if ci:
                    fig.add_trace(go.Scatter(x=r.layers + r.layers[::-1], y=[b for _, b in ci] + [a for a, _ in ci][::-1],
                                             fill="toself", fillcolor=c, opacity=0.2, line=dict(width=0),
                                             hoverinfo="skip", showlegend=False), row=row, col=col)
                fig.add_trace(go.Scatter(x=r.layers, y=d[metric], mode="lines+markers", line=dict(color=c, width=2.2),
                                         marker=dict(size=4), name=f"{comp} ({COMPONENTS.get(comp, comp)})",
                                         legendgroup=comp, showlegend=col == 1 and row == 1), row=row, col=col)
            if col == 1:
                fig.update_yaxes(title_text=f"test {'AUROC' if metric == 'auroc' else metric}", row=row, col=col)
            if row == len(metrics):
                fig.update_xaxes(title_text="layer", row=row, col=col)
    lo = min(0.4, min(min(a for a, _ in d[f"{m}_ci"] if a is not None) for r in results.values()
                      for d in r.components.values() for m in metrics if d.get(f"{m}_ci")) - 0.02)
    fig.update_yaxes(range=[lo, 1.0])
    n_seeds = sorted({r.n_seeds for r in results.values()})
    model = next(iter(results.values())).model
    head = title or f"Knowledge-conflict probes (Zhao et al. 2024) — {model}"
    style(fig, title=(f"{head}<br><sub>mean and 95% CI over {'/'.join(map(str, n_seeds))} grouped splits; dashed: "
                      f"chance ({chance:g}); shaded: middle third of the layers</sub>"), width=1150,
          height=330 * len(metrics) + 170)
    fig.update_layout(margin=dict(t=130), legend=dict(orientation="h", yanchor="bottom", y=1.07, x=1, xanchor="right"))
    return fig
