"""The attention section of ``interp figures``: knockout, contributions, dataset sweep, RAG.

Results are kept with :func:`interp.results.cached` (keyed by their settings; quick mode in
``*_quick`` directories) and figures are redrawn from them; with ``model=None`` (``--redraw``) a
missing result raises :class:`~interp.errors.ResultMissingError` naming the command that makes
it.  quick mode sweeps 3 known facts and one RAG example; full mode every known_1000 fact the
model knows (kept with :func:`interp.results.cached_sweep`: its own resumable command, which a
full run continues after a kill) and the first 3 :data:`~interp.attention.rag.RAG_EXAMPLES`.  Captions and numbers are read from the results.

**Position 0.**  The default model's tokenizer adds no BOS, so a prompt's first token is the
attention sink, and most known_1000 prompts start with their subject: blocking subject → last
then also blocks the sink (Geva et al.'s notebook flags this case).  The single-prompt knockout and
the dataset sweep run with a sink prefix (:func:`sink_token`: ``<|endoftext|>`` when the tokenizer
has it as a special token, else the tokenizer's BOS) and, for comparison, without one (results
``*_no_bos``); the numbers and captions give both.  The RAG comparison still runs without a
prefix, and its caption says so.
"""

from __future__ import annotations

import shlex
from pathlib import Path

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "The Eiffel Tower"
KNOWN_1000 = "known_1000/known_1000.json"
#: --n-facts of the full sweep: more than known_1000's rows, so every fact the model knows is swept
ALL_FACTS = 2000


def _argmin(xs):
    return min(range(len(xs)), key=xs.__getitem__)


def sink_token(tokenizer) -> str | bool:
    """The prefix the figures put before a prompt: ``<|endoftext|>`` if special here, else the BOS."""
    return "<|endoftext|>" if "<|endoftext|>" in (getattr(tokenizer, "all_special_tokens", None) or []) else True


def _drop(rel: list[float], layers: list[int]) -> str:
    i = _argmin(rel)
    return f"{100 * rel[i]:+.1f}% (centre layer {layers[i]})"


def _drop1(summary: dict, cond: str, group: str) -> str:
    """A RAG-flow summary's strongest relative drop of one group as a percentage with its layer."""
    return (f"{100 * summary[cond]['min_rel_change'][group]:+.1f}% "
            f"(centre layer {summary[cond]['argmin_layer'][group]})")


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """Figures of Geva et al.'s knockouts, the SAT-probe contributions and the RAG comparison."""
    from ..datasets import data_dir, display_path
    from ..figures import save_figure
    from ..results import cached, cached_sweep, result_dir
    from .contributions import ContributionResult, attention_contributions
    from .knockout import KnockoutResult, KnockoutSweepResult, attention_knockout, knockout_sweep
    from .rag import RAG_EXAMPLES, RagFlowResult, rag_flow

    import warnings

    from ..errors import PositionZeroWarning

    out_dir = Path(out_dir)
    entries = []
    redo = f"interp figures --only attention --out {display_path(out_dir)}" + (" --quick" if quick else "")

    # 1. one prompt, Geva Fig. 2 — with a sink prefix, and without one for comparison
    sink = sink_token(model.tokenizer) if model is not None else None
    kos = {}
    for tag, bos in (("", sink), ("_no_bos", None)):
        with warnings.catch_warnings():  # the comparison without a prefix is flagged in its result
            if tag:
                warnings.simplefilter("ignore", PositionZeroWarning)
            kos[tag] = cached(KnockoutResult, result_dir(out_dir, "knockout_eiffel" + tag, quick),
                              settings={"prompt": PROMPT, "subject": SUBJECT, "bos": tag == ""}, model=model,
                              command=redo, compute=lambda bos=bos: attention_knockout(model, PROMPT,
                                                                                       subject=SUBJECT, bos=bos))
    ko, nb = kos[""], kos["_no_bos"]
    cmd = shlex.join(["interp", "knockout", "--prompt", PROMPT, "--subject", SUBJECT, "--bos", ko.bos, "--out",
                      display_path(result_dir(out_dir, "knockout_eiffel", quick))])
    save_figure(ko.figure(), out_dir, "attention_knockout_eiffel")
    nums = {"answer": ko.answer, "prefix (position 0)": repr(ko.tokens[0]), "p_clean": round(ko.p_clean, 4),
            "p_clean without the prefix": round(nb.p_clean, 4), "window": ko.window}
    for s_, rel in ko.relative_change.items():
        nums[f"strongest drop, {s_} → last"] = _drop(rel, ko.layers)
        nums[f"strongest drop, {s_} → last, no prefix"] = _drop(nb.relative_change[s_], nb.layers) + (
            " — holds position 0, the sink" if s_ in nb.position_zero else "")
    entries.append({
        "stem": "attention_knockout_eiffel", "title": f"Attention knockout: {PROMPT!r}", "numbers": nums,
        "command": cmd, "results": [result_dir(out_dir, "knockout_eiffel", quick),
                                    result_dir(out_dir, "knockout_eiffel_no_bos", quick)],
        "caption": (f"Relative change of p({ko.answer!r}) when the last token cannot attend to "
                    + ", ".join(f"{s_} ({len(p)} token{'s' * (len(p) != 1)})" for s_, p in ko.sources.items())
                    + f" in a {ko.window}-layer window around each layer (Geva et al. 2023, Fig. 2; layers "
                    f"{ko.windows[len(ko.windows) // 2][0]}–{ko.windows[len(ko.windows) // 2][-1]} around "
                    f"{ko.layers[len(ko.layers) // 2]}). The prompt runs after {ko.bos!r}, so position 0 — the "
                    f"attention sink — is not a prompt token. Without it the subject starts at position 0 "
                    f"({nb.tokens[0]!r}; flagged sets: {', '.join(nb.position_zero) or 'none'}): blocking "
                    f"subject → last then reaches {_drop(nb.relative_change['subject'], nb.layers)} instead "
                    f"of {_drop(ko.relative_change['subject'], ko.layers)}, at p_clean {nb.p_clean:.3f} "
                    f"instead of {ko.p_clean:.3f}.")})

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

    # 3. dataset sweep (resumable: a rerun continues the facts already swept).  Full: every fact of
    # known_1000 the model knows (its own resumable command, `make paper`); quick: 3 facts.
    n = 3 if quick else None
    path = data_dir() / KNOWN_1000
    sws = {}
    for tag, bos in (("", sink), ("_no_bos", None)):
        rdir = result_dir(out_dir, "knockout_sweep" + tag, quick)
        with warnings.catch_warnings():  # the comparison without a prefix is flagged in its result
            if tag:
                warnings.simplefilter("ignore", PositionZeroWarning)
            if quick:
                sws[tag] = cached(KnockoutSweepResult, rdir,
                                  settings={"dataset": KNOWN_1000, "n_facts": n, "bos": tag == ""}, model=model,
                                  command=redo, compute=lambda bos=bos, rdir=rdir: knockout_sweep(
                                      model, path, rdir / "sweep", n_facts=n, bos=bos, progress=False))
            else:
                full_cmd = shlex.join(["interp", "knockout", "--dataset", display_path(path), "--n-facts",
                                       str(ALL_FACTS)] + (["--bos", sink or "<|endoftext|>"] if not tag else [])
                                      + ["--out", display_path(rdir)])
                sws[tag] = cached_sweep(KnockoutSweepResult, rdir, settings={"dataset": KNOWN_1000,
                                                                             "prefixed": tag == ""},
                                        model=model, command=full_cmd,
                                        settings_of=lambda r: {"dataset": r.dataset, "prefixed": bool(r.bos)},
                                        compute=lambda bos=bos, rdir=rdir: knockout_sweep(
                                            model, path, rdir / "sweep", n_facts=None, bos=bos, progress=True))
    sw, snb = sws[""], sws["_no_bos"]
    cmd = shlex.join(["interp", "knockout", "--dataset", display_path(path), "--n-facts", str(n or ALL_FACTS), "--bos", sw.bos,
                      "--out", display_path(result_dir(out_dir, "knockout_sweep", quick))])
    save_figure(sw.figure(), out_dir, "attention_knockout_sweep")
    nums = {"known facts swept": sw.n_known, "rows scanned": sw.n_scanned, "prefix": repr(sw.bos),
            "window": sw.window, "mean p_clean": round(sw.mean_p_clean, 3),
            "facts with position 0 blocked, no prefix": f"{snb.n_position_zero} of {snb.n_known}",
            "facts with an unknown target (p_clean < "
            f"{sw.min_p_clean})": f"{sw.n_unknown_target} of {sw.n_known}"}
    for s_ in sw.sources:
        i = _argmin(sw.mean[s_])
        nums[f"{s_} → last: strongest mean drop"] = (f"{100 * sw.mean[s_][i]:+.1f}% ± {100 * sw.sem[s_][i]:.1f} "
                                                    f"(layer {sw.layers[i]})")
        j = _argmin(snb.mean[s_])
        nums[f"{s_} → last: strongest mean drop, no prefix"] = (
            f"{100 * snb.mean[s_][j]:+.1f}% ± {100 * snb.sem[s_][j]:.1f} (layer {snb.layers[j]})")
    entries.append({
        "stem": "attention_knockout_sweep",
        "title": f"Attention knockout over {sw.n_known} known_1000 facts the model knows",
        "numbers": nums, "command": cmd, "results": [result_dir(out_dir, "knockout_sweep", quick),
                                                     result_dir(out_dir, "knockout_sweep_no_bos", quick)],
        "caption": (f"Mean ± standard error over {sw.n_known} facts (of {sw.n_scanned} rows scanned) of the "
                    f"relative change of the clean top-1 probability, per source set and centre of a "
                    f"{sw.window}-layer window, over facts the model predicts correctly, each prompt after "
                    f"{sw.bos!r}. Without the prefix, {snb.n_position_zero} of the {snb.n_known} facts swept "
                    f"block position 0 (the sink) with one of the sets, and subject → last reaches "
                    f"{100 * min(snb.mean['subject']):+.1f}% instead of {100 * min(sw.mean['subject']):+.1f}%.")})

    # 4. RAG — after the sink prefix, and without one for comparison (as in 1)
    examples = RAG_EXAMPLES[:1] if quick else RAG_EXAMPLES[:3]
    rgs = {}
    for tag, bos in (("", sink), ("_no_bos", None)):
        with warnings.catch_warnings():  # the comparison without a prefix counts position 0 in its result
            if tag:
                warnings.simplefilter("ignore", PositionZeroWarning)
            rgs[tag] = cached(RagFlowResult, result_dir(out_dir, "rag_flow" + tag, quick),
                              settings={"examples": [ex.query for ex in examples], "bos": tag == ""}, model=model,
                              command=redo, compute=lambda bos=bos: rag_flow(model, examples, bos=bos))
    rg, rn = rgs[""], rgs["_no_bos"]
    save_figure(rg.figure(), out_dir, "attention_rag_flow")
    s, sn = rg.summary, rn.summary
    n_ex = len(rg.examples)
    zero = "; ".join(f"{k} of {n_ex} {'no-context' if c == 'plain' else 'with-context'} prompts"
                     for c, k in rn.position_zero.items() if k) or "none"
    entries.append({
        "stem": "attention_rag_flow", "title": "RAG vs parametric: subject vs context flow to the last token",
        "numbers": {"facts": n_ex, "prefix (position 0)": repr(rg.bos),
                    "mean p(answer) no context / with context": f"{s['plain']['mean_p_clean']:.3f} / {s['rag']['mean_p_clean']:.3f}",
                    "strongest subject→last drop, no context": _drop1(s, "plain", "subject"),
                    "strongest subject→last drop, with context": _drop1(s, "rag", "subject"),
                    "strongest context→last drop": _drop1(s, "rag", "context"),
                    "subject contribution, no context / with context": round(s["subject_contrib_ratio_plain_over_rag"], 2),
                    "summed context / subject contribution (with context)": round(
                        s["rag"]["contrib_sum_over_layers"]["context"] / s["rag"]["contrib_sum_over_layers"]["subject"], 2),
                    "without the prefix: subject→last drop, no context / with context":
                        f"{_drop1(sn, 'plain', 'subject')} / {_drop1(sn, 'rag', 'subject')}",
                    "without the prefix: mean p(answer) no context / with context":
                        f"{sn['plain']['mean_p_clean']:.3f} / {sn['rag']['mean_p_clean']:.3f}",
                    "without the prefix: examples whose blocked sets hold position 0": zero},
        "command": None, "results": [result_dir(out_dir, "rag_flow", quick), result_dir(out_dir, "rag_flow_no_bos", quick)],
        "caption": (f"Left: knockouts of {', '.join(rg.rag['rel'])} → last with (solid) and of "
                    f"{', '.join(rg.plain['rel'])} → last without (dotted) a retrieved context, "
                    f"{rg.window}-layer windows, {n_ex} hand-written fact(s) the model knows (an illustration, "
                    f"not a sweep); right: summed attention contributions of each token group. "
                    f"Prompts run after {rg.bos!r}, so position 0 (the attention sink) is not a prompt token. "
                    f"Without the prefix a blocked set holds position 0 in {zero}, and the no-context subject → last "
                    f"drop is {_drop1(sn, 'plain', 'subject')} instead of {_drop1(s, 'plain', 'subject')}.")})
    return entries
