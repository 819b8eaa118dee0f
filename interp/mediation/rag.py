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

Fakepedia holds fewer known facts than a comparison may need (the default model knows 95 of its
233).  The rest then come from a plain fact file (known_1000, LRE) whose counterfactual is made
here (:func:`swap_facts`): another fact's object of the same relation, stated in the question's own
words.  Each source keeps its own resumable log, the result pools the facts and also reports each
source alone (``by_source``), so a reader sees whether the two kinds of context behave alike.
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


@dataclass(frozen=True)
class RagFact:
    """One fact of the comparison: its question, both objects and the counterfactual context."""

    row: int                      # the row in its file (log key "row{row}")
    subject: str
    query: str
    true_object: str
    counterfactual_object: str
    counterfactual_context: str
    relation: str = ""

    @property
    def key(self) -> str:
        """The fact's key in its sweep log."""
        return f"row{self.row}"


#: how each kind of source makes its counterfactual context (recorded in the sweep's settings)
FAKEPEDIA_CONTEXT = "one row per fact (its first counterfactual)"
SWAP_CONTEXT = ("same-relation object swap: the counterfactual object is another fact's object of the same "
                "relation (seeded per row; first token differs from the true object's); context "
                "'{query} {counterfactual object}.'")


def is_fakepedia(rows: list) -> bool:
    """Fakepedia rows carry their own counterfactual paragraph."""
    return bool(rows) and isinstance(rows[0], dict) and "fact_paragraph" in rows[0]


def fakepedia_facts(rows: list[dict], scan: int | None) -> list[RagFact]:
    """Fakepedia facts (one row per fact); counterfactual context = the first sentences of
    ``fact_paragraph`` up to the one naming the counterfactual object."""
    recs = [(i, r) for i, r in enumerate(rows if scan is None else rows[:scan])
            if r.get("query") and r.get("subject") and r.get("true_object") and r.get("fact_paragraph")
            and r.get("counterfactual_object") and r["subject"] in r["query"]]
    return [RagFact(i, r["subject"], r["query"], r["true_object"], r["counterfactual_object"],
                    first_sentences(r["fact_paragraph"], r["counterfactual_object"]), str(r.get("rel_p_id", "")))
            for i, r in one_row_per_fact(recs)]


def swap_facts(model, path: str | Path, scan: int | None, seed: int) -> list[RagFact]:
    """Counterfactuals for a fact file without them (known_1000, LRE relations): each fact's
    counterfactual object is the object of another fact of the same relation, drawn with a
    generator seeded by ``(seed, row)`` among the objects whose first token differs from the true
    object's (so a clean top-1 says which of the two the model answers); the context states it
    in the question's own words, ``"{query} {counterfactual object}."`` — the same sentence as the
    true context with the object swapped.  A relation with a single object gives no counterfactual."""
    import random

    from ..datasets import load_known_facts
    from ..known import answer_id

    facts, _ = load_known_facts(path, limit=scan)
    by_rel: dict[str, list[str]] = {}
    for f in facts:
        objs = by_rel.setdefault(f.relation, [])
        if f.attribute not in objs:
            objs.append(f.attribute)
    first = {o: answer_id(model, o) for objs in by_rel.values() for o in objs}
    out = []
    for f in facts:
        others = [o for o in by_rel[f.relation] if first[o] != first[f.attribute]]
        if not others:
            continue
        cf = random.Random(f"{seed}:{f.row}").choice(others)
        out.append(RagFact(f.row, f.subject, f.prompt, f.attribute, cf, f"{f.prompt} {cf}.", f.relation))
    return out


def rag_facts(model, path: str | Path, scan: int | None, seed: int) -> tuple[list[RagFact], str]:
    """The facts of one source file and how its counterfactual contexts are made."""
    from ..datasets import read_records

    rows = read_records(path)
    if is_fakepedia(rows):
        return fakepedia_facts(rows, scan), FAKEPEDIA_CONTEXT
    return swap_facts(model, path, scan, seed), SWAP_CONTEXT


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
    facts: list  # [subject, question, true_object, counterfactual_object, source file]
    settings: dict
    model: str = ""
    #: condition -> traces whose target (the clean top-1) has p_clean < settings["min_p_clean"]
    n_unknown_target: dict = field(default_factory=dict)
    #: source file -> facts traced from it (the first source's known facts come first)
    sources: dict = field(default_factory=dict)
    #: source file -> condition -> the headline peaks of :attr:`summary` over that source's facts only
    by_source: dict = field(default_factory=dict)

    def figure(self):
        """AIE curves per condition side by side (:func:`rag_figure`)."""
        return rag_figure(self)


def _peak(curve):
    vals = [v for v in curve if v is not None]
    return max(vals) if vals else None


def _summaries(items: dict, kinds, n_layers: int):
    """AIE curves, standard errors and peak summaries per condition of ``items`` (condition -> traces)."""
    from .causal_trace import _aggregate

    aie, se, summary = {}, {}, {}
    for c in CONDITIONS:
        if not items[c]:
            continue
        aie[c], se[c], _, _ = _aggregate(items[c], kinds, n_layers)
        summary[c] = {f"{k}_{cat}_peak": _peak(aie[c][k][cat]) for k in kinds
                      for cat in ("last_subject", "last")}
        summary[c].update({f"{k}_{cat}_peak_layer": (max(range(n_layers),
                           key=lambda l: aie[c][k][cat][l] if aie[c][k][cat][l] is not None else -1e9))
                           for k in kinds for cat in ("last_subject", "last")})
    return aie, se, summary


def rag_comparison(model, fakepedia_path: str | Path, out_dir: str | Path | None = None, *,
                   n_facts: int | None = 8, kinds=("resid", "mlp", "attn"), window: int = 10, samples: int = 3,
                   noise="3sd", seed: int = 0, scan: int | None = 120, min_p_clean: float | None = MIN_P_CLEAN,
                   min_p: float | None = None, max_rows: int | None = None, fill_from: str | Path | None = None,
                   progress: bool = False) -> RagComparisonResult:
    """Causal tracing with and without retrieved context (Wadhwa et al. 2024; Ghosh et al. 2024): trace
    facts the model knows with no context, a true context, a counterfactual one.

    * facts of ``fakepedia_path`` first; when it has fewer than ``n_facts`` known ones, the rest
      come from ``fill_from`` (a known_1000 / LRE file; :func:`swap_facts` makes their
      counterfactuals), skipping subjects already traced.  Any file may be either source:
      Fakepedia rows bring their own counterfactual paragraph, other fact files get a swap;
    * one row per fact (:func:`one_row_per_fact`: Fakepedia repeats a fact once per
      counterfactual object);
    * known = :mod:`interp.known`'s ``"first_token"`` rule: the clean top-1 token of the bare
      query is the first token of the true object — or, with ``min_p``, its ``"min_p"`` rule
      (p(true object) ≥ ``min_p``) — scanning the first ``scan`` rows of the first source (None:
      all; a fill source is scanned whole) and keeping the first ``n_facts`` known ones (None: all);
    * true context = the query completed with the true object ("{query} {true_object}.");
    * counterfactual context = Fakepedia: the first sentences of ``fact_paragraph`` up to the one
      naming the counterfactual object; a swap: "{query} {counterfactual_object}.".
    The target in every condition is the clean top-1 token of that condition's prompt (what the
    model answers); ``answers`` counts whether that is the true or the counterfactual object.
    Noise scale: "3sd" over the subjects of the first source's scanned facts, for every fact.
    With ``out_dir`` every fact's three traces are logged as they finish
    (:class:`interp.sweep.Checkpoint`; the fill source's in ``out_dir/<its file's stem>``): a
    killed run resumes.
    """
    from ..arch import check_components
    from ..datasets import Fact
    from ..known import check_known
    from ..sweep import Checkpoint, SweepErrors
    from .causal_trace import CATEGORIES, causal_trace, resolve_noise

    kinds = tuple(check_components(kinds, "trace kind"))  # bad input up front, not an error per fact
    sources = [(Path(str(fakepedia_path)), scan)] + ([] if fill_from is None else [(Path(str(fill_from)), None)])
    facts_of = [rag_facts(model, p, sc, seed) for p, sc in sources]
    level = resolve_noise(model, noise, [f.subject for f in facts_of[0][0]])
    rule = "first_token" if min_p is None else "min_p"
    settings = {"window": window, "samples": samples, "noise": noise, "noise_level": level, "seed": seed,
                "template": RAG_TEMPLATE, "corrupt": "subject+context", "traced": "question tokens",
                "categories": list(CATEGORIES), "min_p_clean": min_p_clean, "kinds": list(kinds),
                "known_rule": rule if min_p is None else f"p(true object) >= {min_p}", "scan": scan,
                "facts": facts_of[0][1]}
    if fill_from is not None:
        settings["fill_from"] = sources[1][0].name
    errors = SweepErrors("RAG comparison")
    done: list[tuple[str, dict]] = []      # (source, record) in order
    n_scanned, n_known, seen = {}, {}, set()
    for si, ((path, _), (facts, how)) in enumerate(zip(sources, facts_of)):
        if si and n_facts is not None and len(done) >= n_facts:
            break
        facts = [f for f in facts if f.subject.lower() not in seen]
        checks = check_known(model, [Fact(f.query, f.subject, f.true_object) for f in facts], rule=rule, min_p=min_p)
        known = [f for f, c in zip(facts, checks) if c.known]
        n_scanned[path.name], n_known[path.name] = len(facts), len(known)
        if n_facts is not None:
            known = known[:max(0, n_facts - len(done))]
        seen |= {f.subject.lower() for f in known}
        ck = None
        if out_dir is not None:
            ck = Checkpoint(Path(out_dir) if si == 0 else Path(out_dir) / path.stem, {
                "method": "rag_comparison", "model": model.name, "dataset": path.name,
                **{k: settings[k] for k in ("window", "samples", "noise", "seed", "kinds", "min_p_clean")},
                "scan": sources[si][1], "known_rule": settings["known_rule"], "facts": how,
                "noise_level": round(level, 8)})
        desc = f"rag facts ({path.name})"
        if ck is not None:
            it = ck.pending(known, lambda f: f.key, progress=progress, desc=desc, unit="fact")
        else:
            it = known
            if progress:
                from tqdm.auto import tqdm
                it = tqdm(known, desc=desc, unit="fact")
        new = {}
        for f in it:
            try:
                new[f.key] = _trace_fact(model, f, kinds=kinds, window=window, samples=samples, level=level,
                                         seed=seed, min_p_clean=min_p_clean, max_rows=max_rows,
                                         causal_trace=causal_trace)
            except Exception as e:  # noqa: BLE001 — count and list the fact, go on with the rest
                errors.add(f.row, f"{path.name}: {f.subject}: {f.query}", e)
                continue
            if ck is not None:
                ck.add(f.key, new[f.key])
        for f in known:  # in the facts' order, logged by this run or an earlier one
            rec = new.get(f.key) if ck is None else ck.get(f.key)
            if rec is not None:
                done.append((path.name, rec))
    if len(errors):
        print(errors.summary(), file=sys.stderr)
    settings.update({"n_scanned": sum(n_scanned.values()), "n_known": sum(n_known.values())})
    if fill_from is not None:
        settings.update({"n_scanned_by_source": n_scanned, "n_known_by_source": n_known})
    recs_done = [r for _, r in done]
    items = {c: [rec[c] for rec in recs_done] for c in CONDITIONS}
    unknown = {c: sum(x["unknown_target"] for x in items[c]) for c in CONDITIONS}
    answers = {c: {a: sum(x["answer"] == a for x in items[c]) for a in ("true", "counterfactual", "other")}
               for c in CONDITIONS}
    aie, se, summary = _summaries(items, kinds, model.n_layers)
    pc = {c: sum(i["p_clean"] for i in items[c]) / len(items[c]) for c in CONDITIONS if items[c]}
    pk = {c: sum(i["p_corrupt"] for i in items[c]) / len(items[c]) for c in CONDITIONS if items[c]}
    counts = {s: sum(src == s for src, _ in done) for s in dict.fromkeys(src for src, _ in done)}
    by_source = {}
    if len(counts) > 1:
        for s in counts:
            part = [r for src, r in done if src == s]
            by_source[s] = _summaries({c: [r[c] for r in part] for c in CONDITIONS}, kinds, model.n_layers)[2]
    res = RagComparisonResult(list(CONDITIONS), list(kinds), list(range(model.n_layers)), len(recs_done), aie, se,
                              pc, pk, answers, summary, [rec["fact"] + [src] for src, rec in done],
                              {**settings, "errors": errors.by_row()}, model.name, unknown, counts, by_source)
    if out_dir is not None:
        res.save(out_dir)
    return res


def _trace_fact(model, f: RagFact, *, kinds, window, samples, level, seed, min_p_clean, max_rows,
                causal_trace) -> dict:
    """The three traces of one fact (question-relative tokens, effects and subject range)."""
    ctxs = {"no_context": None, "true_context": f"{f.query} {f.true_object}.",
            "counterfactual_context": f.counterfactual_context}
    t_id, _ = model.encode_target(" " + f.true_object)
    c_id, _ = model.encode_target(" " + f.counterfactual_object)
    rec = {}
    for c, ctx in ctxs.items():
        with warnings.catch_warnings():  # counted in n_unknown_target
            warnings.simplefilter("ignore", UnknownTargetWarning)
            res = causal_trace(model, f.query, f.subject, None, kinds=kinds, window=window, samples=samples,
                               noise=level, seed=seed, context=ctx, min_p_clean=min_p_clean, max_rows=max_rows)
        # categories are computed on the traced (question) tokens: shift to question-relative
        q0 = res.traced_positions[0]
        rec[c] = {"tokens": res.tokens[q0:], "ie": {k: [row[q0:] for row in res.indirect_effect[k]] for k in kinds},
                  "p_clean": res.p_clean, "p_corrupt": res.p_corrupt,
                  "subject_range": [res.subject_range[0] - q0, res.subject_range[1] - q0],
                  "answer": ("true" if res.target_id == t_id else "counterfactual" if res.target_id == c_id
                             else "other"),
                  "unknown_target": res.unknown_target is not None}
    rec["fact"] = [f.subject, f.query, f.true_object, f.counterfactual_object]
    return rec


def source_phrase(res: RagComparisonResult) -> str:
    """Where the facts come from, e.g. "95 Fakepedia + 5 known_1000 with swapped objects"."""
    counts = res.sources or {res.settings.get("dataset", "Fakepedia"): res.n_facts}
    return " + ".join(f"{n} {_source_name(s)}" for s, n in counts.items())


def _source_name(name: str) -> str:
    return "Fakepedia" if "fakepedia" in name.lower() else f"{Path(name).stem} with swapped objects"


def rag_figure(res: RagComparisonResult):
    """Side by side: AIE by layer at the last subject token (resid, mlp) and the last token (attn)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures import COLORS, style

    conds = [c for c in res.conditions if c in res.aie]
    titles = {"no_context": "no context", "true_context": "context states the fact",
              "counterfactual_context": "counterfactual context"}
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
                           f"{res.n_facts} facts it knows ({source_phrase(res)})", width=1500, height=560)
    return fig.update_layout(margin=dict(t=120))   # room for the two-line panel titles
