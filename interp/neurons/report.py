"""The neurons section of ``interp figures``: clamping a decoded neuron, neuron types on a corpus.

Results are kept with :func:`interp.results.cached` (keyed by their settings; quick mode in
``*_quick`` directories) and figures are redrawn from them; ``model=None`` redraws only and names
the command for anything missing.  Concept vectors and unlearning have their own section
(:mod:`interp.concepts.report`).  Captions and numbers are read from the results.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

#: every ConceptVectors Wikipedia article (28 texts, 362,899 tokens of the default model)
CORPUS = ["conceptvectors/llama2-7b_concepts_dev.json", "conceptvectors/olmo-7b_concepts_dev.json"]
#: None: the main pass covers the whole corpus, then the top-up pass traces the candidates the calibration
#: missed (an int N cuts both short after N batches, for a quick look; the state in ``state/`` continues)
MAIN_BATCHES = None
CLAMP_VALUES = [1.0, 2.0, 5.0, 10.0, 20.0]
CLAMP_PROMPTS = ["My favourite word is", "The weather today is"]


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """Figures of neuron clamping (Davies 2025) and dead / token / positional neurons (Voita et al. 2023)."""
    from ..datasets import data_dir, display_path
    from ..figures import save_figure
    from ..results import cached, result_dir
    from .clamp import ClampResult, clamp_demo, clamp_effect

    out_dir = Path(out_dir)
    entries = []
    redo = f"interp figures --only neurons --out {display_path(out_dir)}" + (" --quick" if quick else "")

    # ------------------------------------------------------------ 1. clamping a decoded neuron
    rdir = result_dir(out_dir, "neurons_clamp", quick)
    st = {"layers": [20] if quick else list(range(16, 30)), "n_candidates": 12 if quick else 24,
          "prompts": CLAMP_PROMPTS, "values": CLAMP_VALUES}

    def compute_clamp():
        from .decode import decode_neurons
        nmap = decode_neurons(model, layers=st["layers"], directions=["out"], k=5, bottom=False)
        demo = clamp_demo(model, nmap, prompt=CLAMP_PROMPTS[0], n_candidates=st["n_candidates"])
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / "demo.json").write_text(json.dumps(demo, indent=1))
        b = demo["best"]
        return clamp_effect(model, CLAMP_PROMPTS, [(b["layer"], b["neuron"])], CLAMP_VALUES, b["token_id"])

    cr = cached(ClampResult, rdir, settings=st, model=model, command=redo, compute=compute_clamp)
    save_figure(cr.figure(), out_dir, "neurons_clamp")
    (l, n), = cr.neurons
    i10 = cr.values.index(10.0)
    others = ", ".join(repr(p) for p in cr.prompts[1:])
    entries.append({
        "stem": "neurons_clamp", "title": f"Clamping neuron L{l} N{n} (value vector's top token {cr.target!r})",
        "numbers": {"neuron": f"L{l} N{n}", "top token of its value vector": cr.target,
                    "p clean (prompt 1)": round(float(cr.p_clean[0]), 6),
                    "p clamped to 10 at all positions (prompt 1)": round(float(cr.p_clamped[i10, 0]), 4),
                    "ratio at 10": round(float(cr.ratio[i10, 0]), 1),
                    "p clean (prompt 2)": round(float(cr.p_clean[1]), 6),
                    "p clamped to 10 (prompt 2)": round(float(cr.p_clamped[i10, 1]), 4),
                    "clean activation at last token": round(float(cr.clean_activation[0, 0]), 3)},
        "command": None, "results": [rdir],
        "caption": (f"A neuron chosen among {st['n_candidates']} candidates of layers {st['layers'][0]}–"
                    f"{st['layers'][-1]} from the LM-head decoding of value vectors, on {cr.prompts[0]!r}; "
                    f"setting its activation to {', '.join(f'{v:g}' for v in cr.values)} multiplies "
                    f"p({cr.target!r}) by {float(cr.ratio[i10, 0]):.0f} at 10 there, and by "
                    f"{float(cr.ratio[i10, 1]):.0f} on {others}.")})

    # ------------------------------------------------------------ 2. neuron types on a corpus
    entries += neuron_type_entries(model, out_dir, quick)
    return entries


def stats_corpus() -> list[Path]:
    """The statistics corpus (:data:`CORPUS`) under the data directory."""
    from ..datasets import data_dir
    return [data_dir() / c for c in CORPUS]


def stats_settings(quick: bool) -> dict:
    """Settings of the figures job's neuron statistics (the key of its cached result)."""
    if quick:
        return {"corpus": CORPUS, "max_tokens": 4096}
    return {"corpus": CORPUS, "max_tokens": None, "main_batches": MAIN_BATCHES, "top_up": MAIN_BATCHES is None}


def voita_comparison(st) -> dict[str, str]:
    """Voita et al.'s OPT findings next to this model's numbers, each marked holds / does not hold."""
    import torch
    L = len(st.layers)
    first = torch.tensor(st.layers) < st.layers[0] + L / 2
    n_layer = st.dead.shape[1]

    def half(mask):
        tot = int(mask.sum())
        return tot, (int(mask[first].sum()) / tot if tot else float("nan"))

    def yes(ok):
        return "holds" if ok else "does not hold"

    dead, _ = half(st.dead)
    rare, rare_first = half(st.rare)
    tok, tok_first = half(st.token_detector)
    big, _ = half(st.bigram_detector)
    pos, pos_first = half(st.positional)
    worst = max(range(L), key=lambda j: int(st.rare[j].sum()))
    pct = torch.tensor([d["embed_pct"] for d in st.detectors]) if st.detectors else torch.zeros(0)
    upct = torch.tensor([d["unembed_pct"] for d in st.detectors]) if st.detectors else torch.zeros(0)
    med = float(pct.median()) if len(pct) else float("nan")
    low = float((upct < 0.05).float().mean()) if len(upct) else float("nan")
    return {
        "dead neurons (OPT: many, >70% of some layers of OPT-66B, in the first half)":
            f"{dead} of {st.dead.numel():,} never active; {yes(dead >= 0.01 * st.dead.numel())}",
        "rare neurons, active on < 1% of tokens (OPT: concentrated in early layers)":
            f"{rare} ({rare_first:.0%} in the first half; most in layer {st.layers[worst]}: "
            f"{int(st.rare[worst].sum())} of {n_layer}); {yes(rare >= 0.01 * st.rare.numel() and rare_first > 0.5)}",
        "token / n-gram detectors, concentrated in early layers":
            f"{tok} token detectors ({tok_first:.0%} in the first half), {big} of them bigram detectors; "
            f"{yes(tok > 0 and tok_first > 0.5)}",
        "detectors' output rows most negative on their own trigger token (detect, then suppress)":
            f"median trigger percentile {med:.1%} against the input embeddings, {low:.0%} of detectors put it in "
            f"the bottom 5% of their next-token logits; {yes(len(pct) > 0 and med < 0.1)}",
        "positional neurons in early-middle layers":
            f"{pos} with η² ≥ {st.params['positional_eta2']} ({pos_first:.0%} in the first half); "
            f"{yes(pos > 0 and pos_first > 0.5)}",
        "sparsity grows with scale (OPT-125M → 66B)": "one 135M model here: no scale comparison",
    }


def neuron_type_entries(model, out_dir: Path, quick: bool) -> list[dict]:
    """Figures of the corpus neuron statistics (Voita et al. 2023) and the comparison with OPT."""
    import torch

    from ..datasets import display_path
    from ..figures import save_figure
    from ..results import cached, result_dir
    from .stats import NeuronStats, neuron_stats

    rdir = result_dir(out_dir, "neuron_stats", quick)
    corpus = stats_corpus()
    st = stats_settings(quick)
    cut = st.get("main_batches")
    cmd = shlex.join(["interp", "neurons", "stats", "--corpus", *map(display_path, corpus)]
                     + (["--max-tokens", str(st["max_tokens"])] if st["max_tokens"] else [])
                     + (["--main-batches", str(cut)] if cut else []) + ([] if st.get("top_up", True) else ["--no-top-up"])
                     + ["--out", display_path(rdir)])
    ns = cached(NeuronStats, rdir, settings=st, model=model, command=cmd,
                compute=lambda: neuron_stats(model, corpus, max_tokens=st["max_tokens"], main_batches=cut,
                                             top_up=st.get("top_up", True), checkpoint_dir=rdir / "state",
                                             progress=True))
    for stem, fig in ns.figures().items():
        save_figure(fig, out_dir, stem)
    p = ns.signals.index("post")
    L = len(ns.layers)
    mid = L // 2
    tau = ns.tau[p]
    c = ns.corpus
    part = "" if ns.n_tokens == c["n_tokens"] else (
        f" (the main pass cut short: the first {c['main_windows']:,} of {c['n_windows']:,} windows, "
        f"{ns.n_tokens / c['n_tokens']:.0%} of the corpus's {c['n_tokens']:,} tokens)")
    corpus_line = (f"{ns.n_tokens:,} tokens{part} of {c['n_texts']} texts ({', '.join(c['sources'])}), "
                   f"windows of {c['max_len']}; gate and up on the calibration sample of "
                   f"{min(ns.signal_tokens.values()):,} tokens spread over the whole corpus")
    totals = {k: int(getattr(ns, k).sum()) for k in ("dead", "rare", "token_detector", "bigram_detector", "positional")}
    base = {"command": cmd, "results": [rdir]}
    out = [{
        "stem": "neuron_types", "title": "Dead, rare, n-gram-detector and positional neurons per layer (vs Voita et al.)",
        "numbers": {"corpus": corpus_line, "threshold": ns.threshold_label(),
                    f"τ_l of silu(gate)·up (layers {ns.layers[0]} / {ns.layers[mid]} / {ns.layers[-1]})":
                        f"{float(tau[0]):.3g} / {float(tau[mid]):.3g} / {float(tau[-1]):.3g}",
                    **{k.replace("_", " "): v for k, v in totals.items()},
                    **{f"Voita: {k}": v for k, v in voita_comparison(ns).items()},
                    "n-gram candidates (calibration) / top-up / unresolved":
                        f"{ns.search['n_candidates']} / {ns.search['n_topup']} / {ns.search['n_unresolved']}",
                    "wall time of the passes, s": {k: round(v) for k, v in ns.seconds.items()}},
        "caption": (f"Neurons per layer under each criterion, on silu(gate)·up (the neuron's output) over "
                    f"{ns.n_tokens:,} tokens: a neuron is active on a token when |a| ≥ τ_l, the magnitude below which "
                    f"the layer's entries carry ≤ {ns.threshold['value']:.0%} of its energy (the ReLU limit of Voita's "
                    f"a > 0; interp.neurons.stats). Detectors are counted exactly: their top-"
                    f"{ns.params['detector_top']} unigrams (bigrams) carry ≥ {ns.params['detector_share']:.0%} of the "
                    f"neuron's energy Σa². {totals['dead']} neurons are dead, {totals['rare']} rare, "
                    f"{totals['token_detector']} token detectors ({totals['bigram_detector']} bigram), "
                    f"{totals['positional']} positional."), **base}]
    fq = ns.freq
    med = {s: [float(fq[i, j].median()) for j in (0, mid, -1)] for i, s in enumerate(ns.signals)}
    out.append({
        "stem": "neuron_frequency", "title": "Activation frequency of every neuron, per layer and signal",
        "numbers": {**{f"median frequency, {s} (layers {ns.layers[0]} / {ns.layers[mid]} / {ns.layers[-1]})":
                       " / ".join(f"{v:.3f}" for v in med[s]) for s in ns.signals},
                    **{f"never active ({s})": sum(ns.per_layer[f"dead_{s}"]) for s in ns.signals},
                    **{f"active on < 1% of tokens ({s})": sum(ns.per_layer[f"rare_{s}"]) for s in ns.signals}},
        "caption": (f"Ridge plots of log10(fraction of tokens on which each neuron is active), per layer, for the gate's "
                    f"opening max(silu(gate), 0), the up projection and their product; the dotted line is Voita's 1% "
                    f"cut. The median neuron of the middle layer is active on {med['post'][1]:.0%} of tokens "
                    f"(product): under a threshold that keeps 99% of the energy, this SwiGLU MLP is dense."), **base})
    out.append({
        "stem": "neuron_magnitude", "title": "Where the threshold sits: per-layer magnitude distributions",
        "numbers": {**{f"τ_l range ({s})": f"{float(ns.tau[i].min()):.3g} … {float(ns.tau[i].max()):.3g}"
                       for i, s in enumerate(ns.signals)},
                    **{f"max |x| ({s})": f"{float(ns.max_abs[i].max()):.4g}" for i, s in enumerate(ns.signals)}},
        "caption": ("Share of all (token, neuron) entries of a layer in each log-magnitude bin (4 per octave, exact "
                    "counts) and the energy threshold τ_l (white). The largest entries, up to "
                    f"{float(ns.max_abs[p].max()):.0f}, are massive activations; the threshold counts the top 0.01% of "
                    "a layer's entries at that quantile so that they cannot make all others negligible."), **base})
    dets = sorted(ns.detectors, key=lambda d: -max(d["bi_share"] if d["bigram_detector"] else 0, d["uni_share"]))
    ex = {}
    for d in dets[:5]:
        grams = d["top_bigrams"] if d["bigram_detector"] else d["top_unigrams"]
        shown = ", ".join(f"{g['text']!r} {g['share']:.0%}" for g in grams)
        kind = "bigram" if d["bigram_detector"] else "token"
        ex[f"L{d['layer']} N{d['neuron']}"] = f"{kind} detector: {shown}; trigger at {d['unembed_pct']:.1%} of its logit effect"
    out.append({
        "stem": "neuron_detectors", "title": "Strongest n-gram detectors and their n-grams",
        "numbers": {"token detectors": totals["token_detector"], "bigram detectors": totals["bigram_detector"], **ex},
        "caption": ("Top n-grams of the strongest bigram detectors (blue) and token detectors (orange), by exact share "
                    "of the neuron's energy, with their corpus counts; each title gives where the neuron's value vector "
                    "(signed as it fires) ranks its own trigger token among the vocabulary (0% = most suppressed)."),
        **base})
    N = ns.eta2.shape[1]
    top = ns.eta2.flatten().argsort(descending=True)[:3].tolist()
    out.append({
        "stem": "neuron_positional", "title": "Most positional neurons and their position profiles",
        "numbers": {f"positional neurons (η² ≥ {ns.params['positional_eta2']})": totals["positional"],
                    **{f"L{ns.layers[f // N]} N{f % N}": f"η² {float(ns.eta2[f // N, f % N]):.3f}" for f in top},
                    "median η² over all neurons": round(float(ns.eta2.median()), 4)},
        "caption": ("Mean activation by position in the window (positions ≥ 1; position 0 is the attention sink) of the "
                    f"neurons whose variance position explains best; {totals['positional']} neurons reach "
                    f"η² ≥ {ns.params['positional_eta2']}."), **base})
    pct = torch.tensor([d["embed_pct"] for d in ns.detectors])
    upct = torch.tensor([d["unembed_pct"] for d in ns.detectors])
    nd = len(ns.detectors)
    out.append({
        "stem": "neuron_detect_suppress", "title": "Detect, then suppress? Detectors' value vectors on their trigger",
        "numbers": {"detectors": nd,
                    "median percentile of the trigger (input embeddings)": round(float(pct.median()), 4) if nd else None,
                    "median percentile of the trigger (next-token logits)": round(float(upct.median()), 4) if nd else None,
                    "trigger in the bottom 5% (logits)": round(float((upct < 0.05).float().mean()), 3) if nd else None,
                    "trigger in the top 5% (logits)": round(float((upct > 0.95).float().mean()), 3) if nd else None,
                    "tied input / output embeddings": ns.params.get("tied_embeddings")},
        "caption": ("Histogram over detectors of where s·w_out (s = the sign the neuron fires with on its trigger) ranks "
                    "the trigger token among the whole vocabulary, through the unembedding and against the input "
                    "embeddings (one matrix when tied); Voita et al. find OPT's detectors put their trigger at the very "
                    "bottom."), **base})
    return out
