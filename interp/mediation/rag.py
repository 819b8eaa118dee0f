"""The RAG condition: a retrieved context placed before the question.

Design note
-----------
"From RAGs to rich parameters" (Wadhwa et al. 2024) and Ghosh et al. 2024 trace the same facts
with and without retrieved text and find that, with a context stating the answer, the subject's
MLP states stop mediating it.  Here a context is one more argument of every method
(``causal_trace(..., context=)``, ``activation_patching(..., context=)``): the prompt becomes
:func:`interp.prompts.rag_prompt` (default the paper's "Information is below: … Given the context
information and not prior knowledge, complete the following: …"), the subject
range is looked up **inside the question** (occurrences in the context are skipped), the
context's token span is recorded, and the grid covers the question's tokens (the context tokens
are not traced: restoring them would need a 100-token-wide grid and is not what the papers show).
Following the paper, tracing with a context corrupts the subject *and* the whole context
(``corrupt="subject+context"``); ``corrupt="subject"`` corrupts only the subject.

:func:`rag_comparison` traces facts the model knows in three conditions — no context, a context
that states the true object, and a Fakepedia counterfactual context that asserts a false one —
and averages the indirect effects by token category; its figure puts the three side by side.
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnknownTargetWarning
from ..known import MIN_P_CLEAN
from ..prompts import RAG_TEMPLATE
from ..results import Result

CONDITIONS = ("no_context", "true_context", "counterfactual_context")


def first_sentences(paragraph: str, must_contain: str, max_sentences: int = 2) -> str:
    """The first sentences of ``paragraph`` up to (and including) one that contains ``must_contain``."""
    sents = re.split(r"(?<=[.!?])\s+", paragraph.strip())
    out = []
    for s in sents:
        out.append(s)
        if must_contain in s:
            break
    if not any(must_contain in s for s in out):
        return paragraph.strip()
    return " ".join(out[-max_sentences:])


def one_row_per_fact(recs: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """The first row of every fact (same subject, query and true object).

    Fakepedia writes each fact several times, once per counterfactual object (841 rows, 233
    facts).  Tracing every row would repeat the no-context and true-context traces of a fact
    three or four times and count them as independent facts (standard errors too small), so a
    comparison takes each fact once, with its first counterfactual."""
    seen, out = set(), []
    for i, r in recs:
        key = (r["subject"], r["query"], r["true_object"])
        if key not in seen:
            seen.add(key)
            out.append((i, r))
    return out


@dataclass
class RagComparisonResult(Result):
    """Average indirect effects per condition (no / true / counterfactual context) × kind × category."""

    stem = "rag_comparison"

    conditions: list[str]
    kinds: list[str]
    layers: list[int]
    n_facts: int
    aie: dict  # condition -> kind -> category -> [layer]
    se: dict
    p_clean: dict  # condition -> mean p_clean
    p_corrupt: dict
    answers: dict  # condition -> {"true": n, "counterfactual": n, "other": n} (clean top-1)
    summary: dict  # condition -> {"mlp_last_subject_peak": .., "resid_last_subject_peak": .., ...}
    facts: list  # [subject, question, true_object, counterfactual_object]
    settings: dict
    model: str = ""
    #: condition -> traces whose target (the clean top-1) has p_clean < settings["min_p_clean"]
    n_unknown_target: dict = field(default_factory=dict)

    def figure(self):
        """AIE curves per condition side by side (:func:`rag_figure`)."""
        return rag_figure(self)


def _peak(curve):
    vals = [v for v in curve if v is not None]
    return max(vals) if vals else None


def rag_comparison(model, fakepedia_path: str | Path, out_dir: str | Path | None = None, *,
                   n_facts: int | None = 8, kinds=("resid", "mlp", "attn"), window: int = 10, samples: int = 3,
                   noise="3sd", seed: int = 0, scan: int | None = 120, min_p_clean: float | None = MIN_P_CLEAN,
                   min_p: float | None = None, max_rows: int | None = None,
                   progress: bool = False) -> RagComparisonResult:
    """Causal tracing with and without retrieved context (Wadhwa et al. 2024; Ghosh et al. 2024): trace
    Fakepedia facts the model knows with no context, a true context, a counterfactual one.

    * one row per fact (:func:`one_row_per_fact`: Fakepedia repeats a fact once per
      counterfactual object);
    * known = :mod:`interp.known`'s ``"first_token"`` rule: the clean top-1 token of the bare
      query is the first token of the true object — or, with ``min_p``, its ``"min_p"`` rule
      (p(true object) ≥ ``min_p``) — scanning the first ``scan`` rows (None: all) and keeping the
      first ``n_facts`` known ones (None: all);
    * true context = the query completed with the true object ("{query} {true_object}.");
    * counterfactual context = the first sentences of Fakepedia's ``fact_paragraph`` up to the one
      naming the counterfactual object.
    The target in every condition is the clean top-1 token of that condition's prompt (what the
    model answers); ``answers`` counts whether that is the true or the counterfactual object.
    Noise scale: "3sd" over the subjects of the scanned facts.  With ``out_dir`` every fact's three
    traces are logged as they finish (:class:`interp.sweep.Checkpoint`): a killed run resumes.
    """
    from ..datasets import Fact, read_records
    from ..known import check_known
    from ..sweep import Checkpoint, SweepErrors
    from ..arch import check_components
    from .causal_trace import CATEGORIES, _aggregate, causal_trace, resolve_noise

    kinds = tuple(check_components(kinds, "trace kind"))  # bad input up front, not an error per fact
    rows = read_records(fakepedia_path)
    recs = [(i, r) for i, r in enumerate(rows if scan is None else rows[:scan])
            if r.get("query") and r.get("subject") and r.get("true_object") and r.get("fact_paragraph")
            and r.get("counterfactual_object") and r["subject"] in r["query"]]
    recs = one_row_per_fact(recs)
    level = resolve_noise(model, noise, [r["subject"] for _, r in recs])
    facts = [Fact(r["query"], r["subject"], r["true_object"], i) for i, r in recs]
    rule = "first_token" if min_p is None else "min_p"
    known = [(i, r) for (i, r), c in zip(recs, check_known(model, facts, rule=rule, min_p=min_p)) if c.known]
    n_known = len(known)
    known = known if n_facts is None else known[:n_facts]
    settings = {"window": window, "samples": samples, "noise": noise, "noise_level": level, "seed": seed,
                "template": RAG_TEMPLATE, "corrupt": "subject+context", "traced": "question tokens",
                "categories": list(CATEGORIES), "min_p_clean": min_p_clean, "kinds": list(kinds),
                "known_rule": rule if min_p is None else f"p(true object) >= {min_p}", "scan": scan, "n_scanned": len(recs), "n_known": n_known,
                "facts": "one row per fact (its first counterfactual)"}
    ck = None if out_dir is None else Checkpoint(out_dir, {
        "method": "rag_comparison", "model": model.name, "dataset": Path(str(fakepedia_path)).name,
        **{k: settings[k] for k in ("window", "samples", "noise", "seed", "kinds", "min_p_clean", "scan")},
        "known_rule": settings["known_rule"], "facts": settings["facts"],
        "noise_level": round(level, 8)})
    errors = SweepErrors("RAG comparison")
    it = known
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(known, desc="rag facts", unit="fact")
    done: dict = {}
    for i, r in it:
        key = f"row{i}"
        if ck is not None and key in ck:
            done[key] = ck.get(key)
            continue
        ctxs = {"no_context": None, "true_context": f"{r['query']} {r['true_object']}.",
                "counterfactual_context": first_sentences(r["fact_paragraph"], r["counterfactual_object"])}
        t_id, _ = model.encode_target(" " + r["true_object"])
        c_id, _ = model.encode_target(" " + r["counterfactual_object"])
        rec = {}
        try:
            for c, ctx in ctxs.items():
                with warnings.catch_warnings():  # counted in n_unknown_target
                    warnings.simplefilter("ignore", UnknownTargetWarning)
                    res = causal_trace(model, r["query"], r["subject"], None, kinds=kinds, window=window,
                                       samples=samples, noise=level, seed=seed, context=ctx,
                                       min_p_clean=min_p_clean, max_rows=max_rows)
                # categories are computed on the traced (question) tokens: shift to question-relative
                q0 = res.traced_positions[0]
                rec[c] = {"tokens": res.tokens[q0:], "ie": {k: [row[q0:] for row in res.indirect_effect[k]]
                                                            for k in kinds},
                          "p_clean": res.p_clean, "p_corrupt": res.p_corrupt,
                          "subject_range": [res.subject_range[0] - q0, res.subject_range[1] - q0],
                          "answer": ("true" if res.target_id == t_id else "counterfactual" if res.target_id == c_id
                                     else "other"),
                          "unknown_target": res.unknown_target is not None}
        except Exception as e:  # noqa: BLE001 — count and list the fact, go on with the rest
            errors.add(i, f"{r['subject']}: {r['query']}", e)
            continue
        rec["fact"] = [r["subject"], r["query"], r["true_object"], r["counterfactual_object"]]
        if ck is not None:
            ck.add(key, rec)
        done[key] = rec
    if len(errors):
        print(errors.summary(), file=sys.stderr)
    recs_done = [done[f"row{i}"] for i, _ in known if f"row{i}" in done]
    items = {c: [rec[c] for rec in recs_done] for c in CONDITIONS}
    unknown = {c: sum(x["unknown_target"] for x in items[c]) for c in CONDITIONS}
    answers = {c: {a: sum(x["answer"] == a for x in items[c]) for a in ("true", "counterfactual", "other")}
               for c in CONDITIONS}
    aie, se, summary, pc, pk = {}, {}, {}, {}, {}
    for c in CONDITIONS:
        if not items[c]:
            continue
        aie[c], se[c], _, _ = _aggregate(items[c], kinds, model.n_layers)
        pc[c] = sum(i["p_clean"] for i in items[c]) / len(items[c])
        pk[c] = sum(i["p_corrupt"] for i in items[c]) / len(items[c])
        summary[c] = {f"{k}_{cat}_peak": _peak(aie[c][k][cat]) for k in kinds
                      for cat in ("last_subject", "last")}
        summary[c].update({f"{k}_{cat}_peak_layer": (max(range(model.n_layers),
                           key=lambda l: aie[c][k][cat][l] if aie[c][k][cat][l] is not None else -1e9))
                           for k in kinds for cat in ("last_subject", "last")})
    res = RagComparisonResult(list(CONDITIONS), list(kinds), list(range(model.n_layers)), len(recs_done), aie, se,
                              pc, pk, answers, summary, [rec["fact"] for rec in recs_done],
                              {**settings, "errors": errors.by_row()}, model.name, unknown)
    if out_dir is not None:
        res.save(out_dir)
    return res


def rag_figure(res: RagComparisonResult):
    """Side by side: AIE by layer at the last subject token (resid, mlp) and the last token (attn)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures import COLORS, style

    conds = [c for c in res.conditions if c in res.aie]
    titles = {"no_context": "no context", "true_context": "context states the fact",
              "counterfactual_context": "counterfactual context (Fakepedia)"}
    fig = make_subplots(rows=1, cols=len(conds), shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[f"{titles[c]}<br>p_clean {res.p_clean[c]:.2f}, "
                                        f"p_corrupt {res.p_corrupt[c]:.2f}" for c in conds])
    lines = [(k, cat) for k in res.kinds for cat in ("last_subject", "last")]
    for i, c in enumerate(conds):
        for j, (k, cat) in enumerate(lines):
            y = res.aie[c][k][cat]
            e = res.se[c][k][cat]
            fig.add_trace(go.Scatter(
                x=res.layers, y=y, mode="lines", name=f"{k} @ {cat.replace('_', ' ')} token",
                line=dict(color=COLORS[j % len(COLORS)], dash="solid" if cat == "last_subject" else "dot"),
                error_y=dict(type="data", array=e, visible=True, thickness=0.6),
                legendgroup=f"{k}{cat}", showlegend=i == 0), 1, i + 1)
        fig.update_xaxes(title_text="layer", row=1, col=i + 1)
    fig.update_yaxes(title_text="average indirect effect", row=1, col=1)
    fig = style(fig, title=f"Causal tracing with and without retrieved context — {res.model}, "
                           f"{res.n_facts} Fakepedia facts it knows", width=1500, height=560)
    return fig.update_layout(margin=dict(t=120))   # room for the two-line panel titles
