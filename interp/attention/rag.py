"""RAG condition: does the last token read the answer from the retrieved context or the subject?

Following "From RAGs to rich parameters" (Wadhwa et al. 2024) and Ghosh et al. 2024, a fact's
query is run twice — alone, and after a retrieved context in their prompt template
(:func:`interp.prompts.rag_prompt`) — and both runs get (1) attention knockouts of ``subject → last`` (and
``non_subject → last`` / ``context → last``, ``last → last``) over windows of layers and (2) the
attention contributions of the subject, context and remaining tokens to the last position.  The
papers' finding: with a context that states the object, subject-side effects fall several fold
and context → last knockouts hurt more than subject → last.

The subject is located at its *last* occurrence (the question comes after the context, which may
name the subject too).  The tracked token is the given answer in both runs, so the two
conditions measure the same probability.

:data:`RAG_EXAMPLES` is a small hand-written set (interp's own data): facts the default model
knows, each with a three-segment context in which exactly one segment states the object and
none contains the query — the shape of the papers' contexts, shorter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..prompts import rag_prompt
from ..results import Result
from ..windows import check_window
from .contributions import attention_contributions
from .knockout import attention_knockout


@dataclass(frozen=True)
class RagExample:
    """A fact for the RAG comparison: query, subject, answer and a context that states the answer."""
    query: str
    subject: str
    answer: str
    context: str


RAG_EXAMPLES: tuple[RagExample, ...] = (
    RagExample("Danish pastry was created in the country of", "Danish pastry", " Denmark",
               "The dough is folded with butter many times. Bakers brought the recipe from Vienna to "
               "Denmark in the 1850s. It is often filled with custard or jam."),
    RagExample("The capital of Roman Republic is", "Roman Republic", " Rome",
               "The state was governed by two consuls elected each year. Its senate met in Rome, the "
               "city that was its seat of government. It lasted for almost five centuries."),
    RagExample("Catalonia belongs to the continent of", "Catalonia", " Europe",
               "Its capital, Barcelona, lies on the Mediterranean coast. The region is in the "
               "south-west of Europe, bordering France. Catalan is spoken there."),
    RagExample("Northern Nigeria Protectorate follows the religion of", "Northern Nigeria Protectorate",
               " Islam", "The territory was administered by the British from 1900 to 1914. Most of "
               "its emirates were ruled by emirs who followed Islam. Its capital later moved to Kaduna."),
    RagExample("Comme j'ai mal is written in", "Comme j'ai mal", " French",
               "The song was released as a single in 1996. Its lyrics are in French. It reached the "
               "top of the charts."),
)


def _mean(rows: list[list[float]]) -> list[float]:
    return [sum(c) / len(c) for c in zip(*rows)] if rows else []


@dataclass
class RagFlowResult(Result):
    """Knockouts and contributions with vs without a retrieved context, per example and averaged.

    ``plain`` / ``rag`` hold, per condition: ``p_clean`` (list over examples), ``rel`` (mean
    relative change per set over layers), ``rel_each`` (per example), ``contrib`` (mean group
    contribution norm per layer), ``contrib_each``.
    """

    stem = "rag_flow"

    examples: list[dict]
    layers: list[int]
    window: int
    plain: dict
    rag: dict
    summary: dict = field(default_factory=dict)
    model: str = ""
    #: the prefix put before every prompt (``bos=``), "" for none
    bos: str = ""
    #: condition -> examples whose blocked sets hold position 0 while it is a prompt token
    position_zero: dict = field(default_factory=dict)

    def figure(self):
        """Knockouts (left) and contributions (right), with the context solid and without it dotted."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ..figures import COLORS, style
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
            f"knockout X → last ({self.window}-layer window)", "attention contribution to last"))
        col = {"subject": COLORS[0], "non_subject": COLORS[1], "context": COLORS[2], "last": COLORS[3],
               "rest": COLORS[5]}
        for cond, dash, lab in ((self.plain, "dot", "no context"), (self.rag, "solid", "with context")):
            for name, ys in cond["rel"].items():
                fig.add_trace(go.Scatter(x=self.layers, y=[100 * v for v in ys], mode="lines",
                                         line=dict(color=col.get(name, COLORS[4]), dash=dash),
                                         name=f"{name} ({lab})", legendgroup=name), 1, 1)
            for name, ys in cond["contrib"].items():
                fig.add_trace(go.Scatter(x=self.layers, y=ys, mode="lines",
                                         line=dict(color=col.get(name, COLORS[4]), dash=dash),
                                         name=f"{name} ({lab})", legendgroup=name,
                                         showlegend=name not in cond["rel"]), 1, 2)
        fig.update_xaxes(title="layer (window centre)", row=1, col=1)
        fig.update_xaxes(title="layer", row=1, col=2)
        fig.update_yaxes(title="% change of p(answer)", row=1, col=1)
        fig.update_yaxes(title="‖Σ_h Σ_s∈group A·vW_O‖", row=1, col=2)
        n = len(self.examples)
        pre = f" · prefix {self.bos!r}" if self.bos else ""
        return style(fig, title=f"RAG vs parametric — {self.model} · {n} fact{'s' * (n > 1)}{pre} "
                                f"(dotted: no context, solid: with context)", width=1250, height=560)


def rag_flow(model, examples: Sequence[RagExample] | None = None, *, window: int | None = None,
             plain_sets: Sequence[str] = ("subject", "non_subject", "last"),
             rag_sets: Sequence[str] = ("subject", "context", "last"),
             bos: bool | str | None = None) -> RagFlowResult:
    """Knockouts and contributions of subject vs context, with and without the context
    (Wadhwa et al. 2024; Ghosh et al. 2024).

    Args:
        examples: :class:`RagExample` items (default :data:`RAG_EXAMPLES`).
        window: knockout window (default: about a fifth of the layers, odd).
        bos: a prefix before every prompt so that position 0 (the attention sink) is not a
            prompt token (:func:`interp.prompts.bos_prefix`); ``position_zero`` counts the
            examples whose blocked sets hold it otherwise.
    Returns:
        :class:`RagFlowResult` whose figure puts both conditions side by side.
    """
    import warnings

    from ..errors import InterpWarning
    from ..prompts import bos_prefix
    examples = list(RAG_EXAMPLES if examples is None else examples)
    window = check_window(window, model.n_layers)
    prefix = bos_prefix(model.tokenizer, bos)
    zero = {"plain": 0, "rag": 0}
    conds = {"plain": {"p_clean": [], "rel_each": [], "contrib_each": []},
             "rag": {"p_clean": [], "rel_each": [], "contrib_each": []}}
    for ex in examples:
        for cond, prompt, sets, ctx in (("plain", ex.query, plain_sets, None),
                                        ("rag", rag_prompt(ex.query, ex.context).text, rag_sets, ex.context.strip())):
            with warnings.catch_warnings():  # counted in position_zero
                warnings.simplefilter("ignore", InterpWarning)
                ko = attention_knockout(model, prompt, sets, subject=ex.subject, context=ctx, window=window,
                                        answer=ex.answer, subject_occurrence=-1, bos=bos)
            zero[cond] += bool(ko.position_zero)
            co = attention_contributions(model, prefix + prompt, subject=ex.subject, context=ctx,
                                         answer=ex.answer, subject_occurrence=-1)
            c = conds[cond]
            c["p_clean"].append(ko.p_clean)
            c["rel_each"].append(ko.relative_change)
            c["contrib_each"].append({g: co.group_norm[:, i].tolist() for i, g in enumerate(co.group_names)})
    for c in conds.values():
        c["rel"] = {k: _mean([r[k] for r in c["rel_each"]]) for k in c["rel_each"][0]}
        c["contrib"] = {k: _mean([r[k] for r in c["contrib_each"]]) for k in c["contrib_each"][0]}
    summary = {}
    for name, c in conds.items():
        summary[name] = {
            "mean_p_clean": sum(c["p_clean"]) / len(c["p_clean"]),
            "min_rel_change": {k: min(v) for k, v in c["rel"].items()},
            "argmin_layer": {k: int(min(range(len(v)), key=v.__getitem__)) for k, v in c["rel"].items()},
            "contrib_sum_over_layers": {k: sum(v) for k, v in c["contrib"].items()},
        }
    ps, rs = summary["plain"]["contrib_sum_over_layers"], summary["rag"]["contrib_sum_over_layers"]
    summary["subject_contrib_ratio_plain_over_rag"] = ps["subject"] / rs["subject"] if rs["subject"] else None
    summary["subject_knockout_ratio_plain_over_rag"] = (
        summary["plain"]["min_rel_change"]["subject"] / summary["rag"]["min_rel_change"]["subject"]
        if summary["rag"]["min_rel_change"].get("subject") else None)
    return RagFlowResult(examples=[ex.__dict__ for ex in examples], layers=list(range(model.n_layers)),
                         window=window, plain=conds["plain"], rag=conds["rag"], summary=summary,
                         model=model.name, bos=prefix, position_zero=zero)
