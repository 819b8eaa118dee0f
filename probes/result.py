"""``ProbeResult``: layer-wise probe numbers of one task, saved as stable JSON, drawn as in the paper.

``components[c]`` holds, for component ``c`` (``resid``, ``mlp``, ``attn``), lists over
``layers``: ``accuracy``, ``auroc`` (means over seeds), their 95% intervals
(``accuracy_ci`` = ``[[lo, hi], …]``), ``accuracy_std``, the random-label ``control_accuracy``,
``selectivity`` (accuracy − control), and ``per_seed`` arrays.  ``baselines`` has the majority
and chance accuracies, ``split_sizes`` the train/val/test rows of every seed, ``class_counts``
the labels (and, for the source task, how many examples were kept apart).  ``best`` names the
best (component, layer) by mean test accuracy with its interval.

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

    def figure(self, metric: str = "accuracy"):
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
            fig.add_trace(go.Scatter(x=self.layers, y=d[metric], mode="lines+markers", name=comp,
                                     line=dict(color=col, width=2.5), marker=dict(size=5)))
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
        return style(fig, title=title, width=1000, height=540)

    def summary(self) -> dict:
        b = self.best
        return {"task": self.task, "best_component": b.get("component"), "best_layer": b.get("layer"),
                "best_accuracy": b.get("accuracy"), "best_accuracy_ci": b.get("accuracy_ci"),
                "best_auroc": b.get("auroc"), "control_accuracy_at_best": b.get("control_accuracy"),
                "majority": self.baselines.get("majority"), "class_counts": self.class_counts}
