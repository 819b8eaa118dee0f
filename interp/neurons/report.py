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

CORPUS = "conceptvectors/llama2-7b_concepts_dev.json"
CLAMP_VALUES = [1.0, 2.0, 5.0, 10.0, 20.0]
CLAMP_PROMPTS = ["My favourite word is", "The weather today is"]


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """Figures of neuron clamping (Davies 2025) and dead / token / positional neurons (Voita et al. 2023)."""
    from ..datasets import data_dir, display_path
    from ..figures import save_figure
    from ..results import cached, result_dir
    from .clamp import ClampResult, clamp_demo, clamp_effect
    from .stats import NeuronStats, neuron_stats

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
    rdir = result_dir(out_dir, "neuron_stats", quick)
    corpus = data_dir() / CORPUS
    st = {"corpus": CORPUS, "max_tokens": 1024 if quick else 8192, "threshold": 0.1}
    cmd = shlex.join(["interp", "neurons", "stats", "--corpus", display_path(corpus), "--max-tokens",
                      str(st["max_tokens"]), "--threshold", str(st["threshold"]), "--out", display_path(rdir)])
    ns = cached(NeuronStats, rdir, settings=st, model=model, command=cmd,
                compute=lambda: neuron_stats(model, corpus, max_tokens=st["max_tokens"], threshold=st["threshold"]))
    save_figure(ns.figure(), out_dir, "neuron_types")
    pl = ns.per_layer
    entries.append({
        "stem": "neuron_types", "title": "Dead, token-detector and positional neurons per layer",
        "numbers": {"tokens": ns.n_tokens, "threshold": f"|a| > {ns.threshold}",
                    "dead neurons (all layers)": int(ns.dead.sum()),
                    "token detectors": int(ns.token_detector.sum()),
                    "positional neurons": int(ns.positional.sum()),
                    "mean activation frequency, layer 0": round(pl["mean_freq"][0], 3),
                    "mean activation frequency, last layer": round(pl["mean_freq"][-1], 3),
                    "max eta^2 (position) over neurons": round(float(ns.pos_eta2.max()), 3)},
        "command": cmd, "results": [rdir],
        "caption": (f"Fractions of each layer's neurons that are never active (|a| ≤ {ns.threshold} on all "
                    f"{ns.n_tokens} tokens of ConceptVectors' Wikipedia texts), whose top-{ns.detector_top} "
                    f"token ids carry ≥ {ns.detector_share_min:.0%} of their activity (token detectors), or whose "
                    f"activation is explained by position (η² ≥ {ns.positional_eta2}); gated activations need "
                    f"the explicit threshold.")})
    return entries
