"""The attention section of ``interp figures``: knockout, contributions, dataset sweep, RAG.

Results are kept with :func:`interp.results.cached` (keyed by their settings; quick mode in
``*_quick`` directories) and figures are redrawn from them; with ``model=None`` (``--redraw``) a
missing result raises :class:`~interp.errors.ResultMissingError` naming the command that makes
it.  quick mode sweeps 3 known facts and one RAG example; full mode 40 known facts and the first
3 :data:`~interp.attention.rag.RAG_EXAMPLES` (the sweep is resumable: a full run continues a
killed one).  Captions and numbers are read from the results.
"""

from __future__ import annotations

import shlex
from pathlib import Path

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "The Eiffel Tower"
KNOWN_1000 = "known_1000/known_1000.json"


def _argmin(xs):
    return min(range(len(xs)), key=xs.__getitem__)


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """Figures of Geva et al.'s knockouts, the SAT-probe contributions and the RAG comparison."""
    from ..datasets import data_dir, display_path
    from ..figures import save_figure
    from ..results import cached, result_dir
    from .contributions import ContributionResult, attention_contributions
    from .knockout import KnockoutResult, KnockoutSweepResult, attention_knockout, knockout_sweep
    from .rag import RAG_EXAMPLES, RagFlowResult, rag_flow

    out_dir = Path(out_dir)
    entries = []
    redo = f"interp figures --only attention --out {display_path(out_dir)}" + (" --quick" if quick else "")

    # 1. one prompt, Geva Fig. 2
    rdir = result_dir(out_dir, "knockout_eiffel", quick)
    cmd = shlex.join(["interp", "knockout", "--prompt", PROMPT, "--subject", SUBJECT, "--out", display_path(rdir)])
    ko = cached(KnockoutResult, rdir, settings={"prompt": PROMPT, "subject": SUBJECT}, model=model, command=cmd,
                compute=lambda: attention_knockout(model, PROMPT, subject=SUBJECT))
    save_figure(ko.figure(), out_dir, "attention_knockout_eiffel")
    nums = {"answer": ko.answer, "p_clean": round(ko.p_clean, 4), "window": ko.window}
    for s, rel in ko.relative_change.items():
        i = _argmin(rel)
        nums[f"strongest drop, {s} → last"] = f"{100 * rel[i]:+.1f}% (centre layer {ko.layers[i]})"
    entries.append({
        "stem": "attention_knockout_eiffel", "title": f"Attention knockout: {PROMPT!r}", "numbers": nums,
        "command": cmd, "results": [rdir],
        "caption": (f"Relative change of p({ko.answer!r}) when the last token cannot attend to "
                    + ", ".join(f"{s} ({len(p)} token{'s' * (len(p) != 1)})" for s, p in ko.sources.items())
                    + f" in a {ko.window}-layer window around each layer (Geva et al. 2023, Fig. 2; layers "
                    f"{ko.windows[len(ko.windows) // 2][0]}–{ko.windows[len(ko.windows) // 2][-1]} around "
                    f"{ko.layers[len(ko.layers) // 2]}).")})

    # 2. contributions (layer × token, head × layer)
    rdir = result_dir(out_dir, "contributions_eiffel", quick)
    cmd = shlex.join(["interp", "contributions", "--prompt", PROMPT, "--subject", SUBJECT, "--out",
                      display_path(rdir)])
    co = cached(ContributionResult, rdir, settings={"prompt": PROMPT, "subject": SUBJECT}, model=model,
                command=cmd, compute=lambda: attention_contributions(model, PROMPT, subject=SUBJECT))
    save_figure(co.figure("tokens"), out_dir, "attention_contributions_tokens")
    save_figure(co.figure("heads", "subject"), out_dir, "attention_contributions_heads")
    gi = co.group_names.index("subject")
    subj = co.group_norm[:, gi].tolist()
    H = co.dla.shape[1]
    top = int(co.dla.flatten().abs().argmax())
    rest = co.group_names[-1]
    entries.append({
        "stem": "attention_contributions_tokens", "title": "Attention contributions to the last token",
        "numbers": {"layer of the largest subject contribution": co.layers[max(range(len(subj)), key=subj.__getitem__)],
                    "largest subject contribution ‖·‖": round(max(subj), 3),
                    f"summed subject / {rest} contribution": round(sum(subj) / float(co.group_norm[:, -1].sum()), 3)},
        "command": cmd, "results": [rdir],
        "caption": (f"‖Σ_h A[h,last,s]·v_s W_O^h‖ per layer ({len(co.layers)}) and source token "
                    f"({len(co.tokens)}) — the SAT-probe measure used by the RAG papers; the subject span "
                    f"({SUBJECT!r}) is framed.")})
    entries.append({
        "stem": "attention_contributions_heads", "title": "Per-head contribution of the subject tokens",
        "numbers": {"head with largest |DLA| to the answer": f"L{co.layers[top // H]}H{top % H}",
                    "its DLA (logit)": round(float(co.dla.flatten()[top]), 3), "answer": co.answer},
        "command": cmd, "results": [rdir],
        "caption": (f"‖Σ_(s∈subject) A[h,last,s]·v_s W_O^h‖ per head ({H}) and layer; the direct logit "
                    f"attribution of each head to {co.answer!r} (final norm frozen at the final residual's scale) "
                    f"is in the result.")})

    # 3. dataset sweep (resumable: a rerun with more facts continues the items already swept)
    n = 3 if quick else 40
    rdir = result_dir(out_dir, "knockout_sweep", quick)
    path = data_dir() / KNOWN_1000
    cmd = shlex.join(["interp", "knockout", "--dataset", display_path(path), "--n-facts", str(n), "--out",
                      display_path(rdir)])
    sw = cached(KnockoutSweepResult, rdir, settings={"dataset": KNOWN_1000, "n_facts": n}, model=model,
                command=cmd, compute=lambda: knockout_sweep(model, path, rdir / "sweep", n_facts=n, progress=False))
    save_figure(sw.figure(), out_dir, "attention_knockout_sweep")
    nums = {"known facts swept": sw.n_known, "rows scanned": sw.n_scanned, "window": sw.window,
            "mean p_clean": round(sw.mean_p_clean, 3)}
    for s in sw.sources:
        i = _argmin(sw.mean[s])
        nums[f"{s} → last: strongest mean drop"] = (f"{100 * sw.mean[s][i]:+.1f}% ± {100 * sw.sem[s][i]:.1f} "
                                                   f"(layer {sw.layers[i]})")
    entries.append({
        "stem": "attention_knockout_sweep",
        "title": f"Attention knockout over {sw.n_known} known_1000 facts the model knows",
        "numbers": nums, "command": cmd, "results": [rdir],
        "caption": (f"Mean ± standard error over {sw.n_known} facts (of {sw.n_scanned} rows scanned) of the "
                    f"relative change of the clean top-1 probability, per source set and centre of a "
                    f"{sw.window}-layer window, over facts the model predicts correctly.")})

    # 4. RAG
    rdir = result_dir(out_dir, "rag_flow", quick)
    examples = RAG_EXAMPLES[:1] if quick else RAG_EXAMPLES[:3]
    rg = cached(RagFlowResult, rdir, settings={"examples": [ex.query for ex in examples]}, model=model,
                command=redo, compute=lambda: rag_flow(model, examples))
    save_figure(rg.figure(), out_dir, "attention_rag_flow")
    s = rg.summary
    entries.append({
        "stem": "attention_rag_flow", "title": "RAG vs parametric: subject vs context flow to the last token",
        "numbers": {"facts": len(rg.examples),
                    "mean p(answer) no context / with context": f"{s['plain']['mean_p_clean']:.3f} / {s['rag']['mean_p_clean']:.3f}",
                    "strongest subject→last drop, no context": f"{100 * s['plain']['min_rel_change']['subject']:+.1f}%",
                    "strongest subject→last drop, with context": f"{100 * s['rag']['min_rel_change']['subject']:+.1f}%",
                    "strongest context→last drop": f"{100 * s['rag']['min_rel_change']['context']:+.1f}%",
                    "subject contribution, no context / with context": round(s["subject_contrib_ratio_plain_over_rag"], 2),
                    "summed context / subject contribution (with context)": round(
                        s["rag"]["contrib_sum_over_layers"]["context"] / s["rag"]["contrib_sum_over_layers"]["subject"], 2)},
        "command": None, "results": [rdir],
        "caption": (f"Left: knockouts of {', '.join(rg.rag['rel'])} → last with (solid) and of "
                    f"{', '.join(rg.plain['rel'])} → last without (dotted) a retrieved context, "
                    f"{rg.window}-layer windows, {len(rg.examples)} fact(s); right: summed attention contributions "
                    f"of each token group.")})
    return entries
