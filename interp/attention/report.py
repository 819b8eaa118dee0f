"""The attention section of ``interp figures``: knockout, contributions, dataset sweep, RAG.

Results are cached under ``<out>/results/<name>/`` and figures are redrawn from them; with
``model=None`` (``--redraw``) a missing result raises :class:`~interp.errors.ResultMissingError`
naming the command that makes it.  quick mode sweeps 3 known facts and one RAG example; full mode
40 known facts and the first 3 :data:`~interp.attention.rag.RAG_EXAMPLES` (the sweep is resumable: a
full run continues a killed one).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ResultMissingError

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "The Eiffel Tower"
KNOWN_1000 = Path(__file__).resolve().parents[3] / "shared" / "data" / "known_1000" / "known_1000.json"


def _load_or_make(cls, rdir: Path, model, make, cmd: str):
    if (rdir / f"{cls.stem}.json").exists():
        return cls.load(rdir)
    if model is None:
        raise ResultMissingError(f"no saved {cls.__name__} in {rdir}; make it with: {cmd} "
                                 f"(or run `interp figures` without --redraw)")
    res = make()
    res.save(rdir)
    return res


def _argmin(xs):
    return min(range(len(xs)), key=xs.__getitem__)


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    from ..figures import save_figure
    from .contributions import ContributionResult, attention_contributions
    from .knockout import KnockoutResult, KnockoutSweepResult, attention_knockout, knockout_sweep
    from .rag import RAG_EXAMPLES, RagFlowResult, rag_flow

    out_dir = Path(out_dir)
    entries = []

    # 1. one prompt, Geva Fig. 2
    rdir = out_dir / "results" / "knockout_eiffel"
    cmd = f'interp knockout --prompt "{PROMPT}" --subject "{SUBJECT}" --out {rdir}'
    ko = _load_or_make(KnockoutResult, rdir, model,
                       lambda: attention_knockout(model, PROMPT, subject=SUBJECT), cmd)
    save_figure(ko.figure(), out_dir, "attention_knockout_eiffel")
    nums = {"answer": ko.answer, "p_clean": round(ko.p_clean, 4), "window": ko.window}
    for s, rel in ko.relative_change.items():
        i = _argmin(rel)
        nums[f"strongest drop, {s} → last"] = f"{100 * rel[i]:+.1f}% (centre layer {ko.layers[i]})"
    entries.append({"stem": "attention_knockout_eiffel", "title": f"Attention knockout: {PROMPT!r}",
                    "numbers": nums, "command": cmd,
                    "caption": "Relative change of the clean prediction's probability when the last token "
                               "cannot attend to the subject / the other earlier tokens / itself in a window "
                               "of layers around each layer (Geva et al. 2023, Fig. 2)."})

    # 2. contributions (layer × token, head × layer)
    rdir = out_dir / "results" / "contributions_eiffel"
    cmd = f'interp contributions --prompt "{PROMPT}" --subject "{SUBJECT}" --out {rdir}'
    co = _load_or_make(ContributionResult, rdir, model,
                       lambda: attention_contributions(model, PROMPT, subject=SUBJECT), cmd)
    save_figure(co.figure("tokens"), out_dir, "attention_contributions_tokens")
    save_figure(co.figure("heads", "subject"), out_dir, "attention_contributions_heads")
    gi = co.group_names.index("subject")
    subj = co.group_norm[:, gi].tolist()
    H = co.dla.shape[1]
    top = int(co.dla.flatten().abs().argmax())
    entries.append({"stem": "attention_contributions_tokens", "title": "Attention contributions to the last token",
                    "numbers": {"layer of the largest subject contribution": co.layers[max(range(len(subj)), key=subj.__getitem__)],
                                "largest subject contribution ‖·‖": round(max(subj), 3),
                                "summed subject / rest contribution": round(sum(subj) / float(co.group_norm[:, -1].sum()), 3)},
                    "command": cmd,
                    "caption": "‖Σ_h A[h,last,s]·v_s W_O^h‖ per layer and source token (SAT-probe measure used "
                               "by the RAG papers); the subject span is framed."})
    entries.append({"stem": "attention_contributions_heads", "title": "Per-head contribution of the subject tokens",
                    "numbers": {"head with largest |DLA| to the answer": f"L{co.layers[top // H]}H{top % H}",
                                "its DLA (logit)": round(float(co.dla.flatten()[top]), 3),
                                "answer": co.answer},
                    "command": cmd,
                    "caption": "‖Σ_{s∈subject} A[h,last,s]·v_s W_O^h‖ per head and layer; DLA of each head to "
                               "the answer (final norm frozen at the final residual's scale) is in the result."})

    # 3. dataset sweep
    n = 3 if quick else 40
    rdir = out_dir / "results" / ("knockout_sweep_quick" if quick else "knockout_sweep")
    cmd = f"interp knockout --dataset {KNOWN_1000} --n-facts {n} --out {rdir}"
    if (rdir / "knockout_sweep.json").exists() and model is not None:
        sw = KnockoutSweepResult.load(rdir)
        if sw.n_known < n:  # a killed / smaller sweep: continue it (resumable)
            sw = knockout_sweep(model, KNOWN_1000, rdir / "sweep", n_facts=n, progress=False)
            sw.save(rdir)
    else:
        sw = _load_or_make(KnockoutSweepResult, rdir, model,
                           lambda: knockout_sweep(model, KNOWN_1000, rdir / "sweep", n_facts=n, progress=False),
                           cmd)
    save_figure(sw.figure(), out_dir, "attention_knockout_sweep")
    nums = {"known facts swept": sw.n_known, "rows scanned": sw.n_scanned, "window": sw.window,
            "mean p_clean": round(sw.mean_p_clean, 3)}
    for s in sw.sources:
        i = _argmin(sw.mean[s])
        nums[f"{s} → last: strongest mean drop"] = (f"{100 * sw.mean[s][i]:+.1f}% ± {100 * sw.sem[s][i]:.1f} "
                                                   f"(layer {sw.layers[i]})")
    entries.append({"stem": "attention_knockout_sweep",
                    "title": f"Attention knockout over {sw.n_known} known_1000 facts the model knows",
                    "numbers": nums, "command": cmd,
                    "caption": "Mean ± standard error of the relative change of the clean top-1 probability, "
                               "per source set and window centre, over facts the model predicts correctly."})

    # 4. RAG
    rdir = out_dir / "results" / ("rag_flow_quick" if quick else "rag_flow")
    examples = RAG_EXAMPLES[:1] if quick else RAG_EXAMPLES[:3]
    rg = _load_or_make(RagFlowResult, rdir, model, lambda: rag_flow(model, examples),
                       f"interp figures --only attention{' --quick' if quick else ''}")
    save_figure(rg.figure(), out_dir, "attention_rag_flow")
    s = rg.summary
    entries.append({"stem": "attention_rag_flow", "title": "RAG vs parametric: subject vs context flow to the last token",
                    "numbers": {"facts": len(rg.examples),
                                "mean p(answer) no context / with context": f"{s['plain']['mean_p_clean']:.3f} / {s['rag']['mean_p_clean']:.3f}",
                                "strongest subject→last drop, no context": f"{100 * s['plain']['min_rel_change']['subject']:+.1f}%",
                                "strongest subject→last drop, with context": f"{100 * s['rag']['min_rel_change']['subject']:+.1f}%",
                                "strongest context→last drop": f"{100 * s['rag']['min_rel_change']['context']:+.1f}%",
                                "subject contribution, no context / with context": round(s["subject_contrib_ratio_plain_over_rag"], 2),
                                "summed context / subject contribution (with context)": round(
                                    s["rag"]["contrib_sum_over_layers"]["context"] / s["rag"]["contrib_sum_over_layers"]["subject"], 2)},
                    "command": f"interp figures --only attention{' --quick' if quick else ''}",
                    "caption": "Left: knockouts of subject/context/last → last with (solid) and without (dotted) a "
                               "retrieved context; right: summed attention contributions of each token group."})
    return entries
