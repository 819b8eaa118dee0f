"""Figures of the causal-mediation section: compute (or load cached results) and draw.

``report_sections(model, out_dir, quick)`` writes, under ``out_dir``, one figure per analysis and
returns their descriptions.  Results are cached in ``out_dir/results/<name>/`` and figures are
always redrawn from those files, so restyling never reruns the model.  ``quick=True`` shrinks
every sweep (fewer facts, noise samples) to stay within ~90 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "Eiffel Tower"
CORRUPT = "The Kremlin Palace is located in the city of"


def _cached(cls, d: Path, make):
    from ..errors import ResultMissingError
    try:
        return cls.load(d)
    except ResultMissingError:
        res = make()
        res.save(d)
        return res


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    from ..figures import save_figure
    from .attribution import AttributionResult, attribution_patching, compare_with_patching
    from .causal_trace import CausalTraceResult, TraceSweepResult, causal_trace, trace_dataset
    from .patching import PatchingResult, activation_patching
    from .rag import RagComparisonResult, rag_comparison

    out_dir = Path(out_dir)
    res_dir = out_dir / "results"
    samples = 2 if quick else 10
    sections = []

    # 1. one causal trace
    d = res_dir / "mediation_trace"
    tr = _cached(CausalTraceResult, d, lambda: causal_trace(model, PROMPT, SUBJECT, samples=samples))
    save_figure(tr.figure(), out_dir, "mediation_trace")
    nums = {"p_clean": tr.p_clean, "p_corrupt": tr.p_corrupt, "samples": tr.settings["samples"]}
    for k in tr.kinds:
        g = tr.grid(k, effect=True)
        flat = int(g.nan_to_num(-1e9).argmax())
        l, t = divmod(flat, g.shape[1])
        nums[f"{k}_max_ie"] = float(g[l, t])
        nums[f"{k}_max_at"] = f"layer {l}, token {t} {tr.tokens[t]!r}"
    sections.append({"stem": "mediation_trace", "title": f"Causal trace of {PROMPT!r}", "numbers": nums,
                     "command": f"interp trace --prompt '{PROMPT}' --subject '{SUBJECT}' --samples "
                                f"{tr.settings['samples']} --out {d}",
                     "caption": "ROME causal tracing: probability of the answer when one hidden state (or a "
                                "10-layer window of MLP / attention outputs) is restored in runs with noised "
                                "subject embeddings."})

    # 2. known_1000 sweep
    d = res_dir / "trace_sweep"
    kw = dict(limit=60, max_known=2, samples=1) if quick else dict(limit=200, max_known=8, samples=2)
    sw = _cached(TraceSweepResult, d, lambda: trace_dataset(model, DATA / "known_1000" / "known_1000.json", d,
                                                            progress=False, **kw))
    save_figure(sw.figure(), out_dir, "mediation_trace_sweep")
    nums = {"rows_scanned": sw.n_scanned, "known": sw.n_known, "traced": sw.n_traced,
            "mean_p_clean": sw.mean_p_clean, "mean_p_corrupt": sw.mean_p_corrupt}
    for k, pk in sw.peaks.items():
        nums[f"{k}_peak"] = f"AIE {pk['aie']:.3f} at {pk['category']}, layer {pk['layer']}"
    for k in sw.kinds:
        ls = sw.aie[k]["last_subject"]
        nums[f"{k}_last_subject_peak"] = max(v for v in ls if v is not None)
    sections.append({"stem": "mediation_trace_sweep", "title": "Average indirect effect on known_1000",
                     "numbers": nums,
                     "command": (f"interp trace --dataset ../shared/data/known_1000/known_1000.json --limit "
                                 f"{sw.settings.get('limit')} --max-known {sw.n_traced} --samples "
                                 f"{sw.settings['samples']} --out {d}"),
                     "caption": "ROME's average indirect effect by token category and layer over the facts the "
                                "model knows (clean top-1 = attribute), with standard errors in the hover."})

    # 3. RAG condition
    d = res_dir / "rag_comparison"
    rk = dict(n_facts=1, samples=1, scan=40) if quick else dict(n_facts=4, samples=2, scan=120)
    rg = _cached(RagComparisonResult, d, lambda: rag_comparison(
        model, DATA / "fakepedia" / "base_fakepedia_subset_slim.jsonl", **rk))
    save_figure(rg.figure(), out_dir, "mediation_rag")
    nums = {"facts": rg.n_facts}
    for c, s in rg.summary.items():
        for key in ("mlp_last_subject_peak", "resid_last_subject_peak", "attn_last_peak"):
            if key in s:
                nums[f"{c}:{key}"] = s[key]
        nums[f"{c}:answers"] = rg.answers[c]
    sections.append({"stem": "mediation_rag", "title": "Causal tracing with and without retrieved context",
                     "numbers": nums, "command": "python -c 'from interp.mediation.rag import rag_comparison; ...'"
                                                 " (see interp/mediation/report.py)",
                     "caption": "Average indirect effects with no context, a context stating the fact, and a "
                                "Fakepedia counterfactual context (subject + context corrupted)."})

    # 4. patching + AtP
    d = res_dir / "mediation_patching"
    sites = ("resid_pre", "attn_out", "mlp_out")
    pt = _cached(PatchingResult, d, lambda: activation_patching(model, PROMPT, CORRUPT, sites=sites))
    at = _cached(AttributionResult, d, lambda: attribution_patching(model, PROMPT, CORRUPT, sites=sites,
                                                                    answer=pt.answer, wrong=pt.wrong))
    save_figure(pt.figure(), out_dir, "mediation_patching")
    rho = compare_with_patching(at, pt)
    nums = {"clean_logit_diff": pt.clean_metric, "corrupt_logit_diff": pt.corrupt_metric,
            **{f"atp_spearman_{s}": v for s, v in rho.items()}}
    sections.append({"stem": "mediation_patching", "title": "Activation patching (denoising) and AtP",
                     "numbers": nums,
                     "command": f"interp patch --clean '{PROMPT}' --corrupt '{CORRUPT}' --sites "
                                f"{','.join(sites)} --atp --out {d}",
                     "caption": "Normalised logit-difference recovery when one clean activation is patched into "
                                "the corrupted run; AtP's Spearman correlation with it in the numbers."})
    return sections
