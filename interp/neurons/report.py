"""Figure-job section of issue 5: neuron clamping, neuron types, concept vectors, unlearning.

Every analysis is cached under ``<out>/results/<name>/`` (JSON + safetensors) and figures are
redrawn from those files; ``model=None`` redraws only and names the command for anything
missing.  The concept is "Japan" (terms japan / japanese / tokyo): ROME's known_1000 has ~50
facts whose answer is Japan or Tokyo, of which the default model gets some right, which is what
a causal check on a 135M model needs.  The ConceptVectors dev concepts (Poland, Italy, …) give
weaker facts coverage for this model; their questions are used for the ROUGE-L part.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ResultMissingError

CONCEPT = "Japan"
TERMS = ["japan", "japanese", "tokyo"]
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _data_dir() -> Path:
    import os
    return Path(os.environ.get("INTERP_DATA", DATA))


def _load_or(rdir: Path, cls, model, cmd: str, compute):
    if (rdir / f"{cls.stem}.json").exists():
        return cls.load(rdir)
    if model is None:
        raise ResultMissingError(f"no saved {cls.__name__} in {rdir}; make it with: {cmd}")
    res = compute()
    res.save(rdir)
    return res


def _facts(model, quick):
    from ..concepts.vectors import facts_for_concept
    from ..datasets import load_known_facts
    facts, _ = load_known_facts(_data_dir() / "known_1000" / "known_1000.json")
    return facts_for_concept(model, facts, TERMS, n_unrelated=12 if quick else 30, max_related=20)


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    from ..figures import save_figure
    out_dir = Path(out_dir)
    res_root = out_dir / "results"
    entries = []
    base_cmd = (f"python -c \"import interp, pathlib; from interp.neurons.report import report_sections; "
                f"report_sections(interp.load(), pathlib.Path('{out_dir}'), {quick})\"")

    # ------------------------------------------------------------ 1. clamping a decoded neuron
    from .clamp import ClampResult, clamp_demo, clamp_effect
    rdir = res_root / "neurons_clamp"

    def compute_clamp():
        from .decode import decode_neurons
        nmap = decode_neurons(model, layers=[20] if quick else list(range(16, 30)), directions=["out"], k=5,
                              bottom=False)
        demo = clamp_demo(model, nmap, n_candidates=12 if quick else 24)
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / "demo.json").write_text(json.dumps(demo, indent=1))
        b = demo["best"]
        return clamp_effect(model, [demo["prompt"], "The weather today is"], [(b["layer"], b["neuron"])],
                            [1.0, 2.0, 5.0, 10.0, 20.0], b["token_id"])

    cr = _load_or(rdir, ClampResult, model, base_cmd, compute_clamp)
    save_figure(cr.figure(), out_dir, "neurons_clamp")
    (l, n), = cr.neurons
    i10 = cr.values.index(10.0)
    entries.append({
        "stem": "neurons_clamp", "title": f"Clamping neuron L{l} N{n} (value vector's top token {cr.target!r})",
        "numbers": {"neuron": f"L{l} N{n}", "top token of its value vector": cr.target,
                    "p clean (prompt 1)": round(float(cr.p_clean[0]), 6),
                    "p clamped to 10 at all positions (prompt 1)": round(float(cr.p_clamped[i10, 0]), 4),
                    "ratio at 10": round(float(cr.ratio[i10, 0]), 1),
                    "p clean (prompt 2)": round(float(cr.p_clean[1]), 6),
                    "p clamped to 10 (prompt 2)": round(float(cr.p_clamped[i10, 1]), 4),
                    "clean activation at last token": round(float(cr.clean_activation[0, 0]), 3)},
        "command": f'interp neurons clamp --prompt "{cr.prompts[0]}" --neuron {l}:{n} --value 1 2 5 10 20 '
                   f'--target "{cr.target}"',
        "caption": "A neuron chosen from the LM-head decoding of value vectors; setting its activation raises "
                   "the probability of its own top token by orders of magnitude, on two unrelated prompts."})

    # ------------------------------------------------------------ 2. neuron types on a corpus
    from .stats import NeuronStats, neuron_stats
    rdir = res_root / "neuron_stats"
    corpus = _data_dir() / "conceptvectors" / "llama2-7b_concepts_dev.json"
    max_tokens = 1024 if quick else 8192
    st = _load_or(rdir, NeuronStats, model, f"interp neurons stats --corpus {corpus} --max-tokens {max_tokens}",
                  lambda: neuron_stats(model, corpus, max_tokens=max_tokens, threshold=0.1))
    save_figure(st.figure(), out_dir, "neuron_types")
    pl = st.per_layer
    entries.append({
        "stem": "neuron_types", "title": "Dead, token-detector and positional neurons per layer",
        "numbers": {"tokens": st.n_tokens, "threshold": f"|a| > {st.threshold}",
                    "dead neurons (all layers)": int(st.dead.sum()),
                    "token detectors": int(st.token_detector.sum()),
                    "positional neurons": int(st.positional.sum()),
                    "mean activation frequency, layer 0": round(pl["mean_freq"][0], 3),
                    "mean activation frequency, last layer": round(pl["mean_freq"][-1], 3),
                    "max eta^2 (position) over neurons": round(float(st.pos_eta2.max()), 3)},
        "command": f"interp neurons stats --corpus {corpus} --max-tokens {max_tokens}",
        "caption": "Fractions of each layer's neurons that are never active, that fire on ≤3 token ids "
                   "(≥90% of their activity), or whose activation is mostly explained by position, "
                   "over ConceptVectors' Wikipedia texts; gated activations need the explicit threshold."})

    # ------------------------------------------------------------ 3. concept vectors
    from ..concepts.vectors import CausalCheckResult, ConceptCandidates, causal_check, find_concept_vectors
    rdir = res_root / "concept_candidates"
    cl = [22, 23, 24, 28, 29] if quick else None
    cands = _load_or(rdir, ConceptCandidates, model,
                     f"interp concepts find --concept {CONCEPT} --terms {' '.join(TERMS)}",
                     lambda: find_concept_vectors(model, CONCEPT, terms=TERMS, k=200, layers=cl, limit=20))
    if cands.candidates:
        save_figure(cands.figure(), out_dir, "concept_candidates")
    top = cands.candidates[:2]
    entries.append({
        "stem": "concept_candidates", "title": f"Candidate concept vectors for {CONCEPT!r}",
        "numbers": {"layers searched": f"{cands.layers[0]}..{cands.layers[-1]} ({len(cands.layers)})",
                    "candidates": len(cands.candidates),
                    **{f"#{j + 1}": f"L{c['layer']}:{c['index']} score {c['score']}, matched {c['matched'][:4]} "
                       f"at ranks {c['matched_ranks'][:4]}" for j, c in enumerate(top)}},
        "command": f"interp concepts find --concept {CONCEPT} --terms {' '.join(TERMS)}",
        "caption": "Value vectors ranked by how many of the concept's words sit in their top-200 vocabulary "
                   "projection (no final norm), rank-weighted."})
    vectors = [(c["layer"], c["index"]) for c in top[:1]]
    facts_cache: dict = {}

    def facts():
        if "x" not in facts_cache:
            facts_cache["x"] = _facts(model, quick)
        return facts_cache["x"]

    checks = [("zero", 0.0)] if quick else [("noise", 0.1), ("noise", 1.0), ("zero", 0.0)]
    for mode, sigma in checks:
        tag = f"{mode}{'' if mode == 'zero' else str(sigma).replace('.', 'p')}"
        rdir = res_root / f"concept_causal_{tag}"

        def compute_check(mode=mode, sigma=sigma):
            rel, unrel = facts()
            from ..concepts.vectors import find_concept_record, load_concepts
            recs = load_concepts(_data_dir() / "conceptvectors" / "llama2-7b_concepts_dev.json")
            rec = find_concept_record(recs, "Italy")  # unrelated questions for ROUGE-L
            rq = [f.prompt.rstrip() + "?" for f in rel][:5]
            return causal_check(model, vectors, concept=CONCEPT, related_facts=rel, unrelated_facts=unrel,
                                related_questions=[] if quick else rq,
                                unrelated_questions=[] if quick else rec["QA"][:5],
                                mode=mode, sigma=sigma, max_new_tokens=12)

        cc = _load_or(rdir, CausalCheckResult, model, base_cmd, compute_check)
        stem = f"concept_causal_{tag}"
        save_figure(cc.figure(), out_dir, stem)
        fr, fu = cc.facts.get("related", {}), cc.facts.get("unrelated", {})
        nums = {"vector": ", ".join(f"L{a}:{b}" for a, b in cc.vectors), "vector norm": round(cc.vector_norms[0], 3),
                "related facts": fr.get("n"), "related acc before→after": f"{fr.get('acc_before', 0):.3f} → {fr.get('acc_after', 0):.3f}",
                "related p before→after": f"{fr.get('p_before', 0):.3f} → {fr.get('p_after', 0):.3f}",
                "unrelated facts": fu.get("n"), "unrelated acc before→after": f"{fu.get('acc_before', 0):.3f} → {fu.get('acc_after', 0):.3f}",
                "unrelated p before→after": f"{fu.get('p_before', 0):.3f} → {fu.get('p_after', 0):.3f}"}
        for g, v in cc.qa.items():
            nums[f"ROUGE-L {g} QA (after vs before)"] = round(v["rouge_l"], 3)
        entries.append({
            "stem": stem, "title": f"Causal check of the {CONCEPT} vector: {mode}" + (f" σ={sigma}" if mode == "noise" else ""),
            "numbers": nums, "command": base_cmd,
            "caption": "Known facts about the concept vs unrelated known facts (both answered correctly by the "
                       "clean model), before and after perturbing the concept vector in the weights."})

    # ------------------------------------------------------------ 4. unlearning: intrinsic vs behaviour
    from ..concepts.unlearning import UnlearningResult, unlearning_eval
    rdir = res_root / "concept_unlearning"
    steps = 3 if quick else 10

    def compute_unlearning():
        rel, unrel = facts()
        from ..datasets import load_known_facts
        allf, _ = load_known_facts(_data_dir() / "known_1000" / "known_1000.json")
        from ..concepts.vectors import default_token_match
        texts = [f"{f.prompt} {f.attribute}." for f in allf
                 if any(default_token_match(w, TERMS) for w in f.attribute.split())]
        return unlearning_eval(model, CONCEPT, vectors, texts=[" ".join(texts[i:i + 6]) for i in range(0, len(texts), 6)],
                               related_facts=rel, unrelated_facts=unrel, steps=steps, sigma=1.0)

    ur = _load_or(rdir, UnlearningResult, model, base_cmd, compute_unlearning)
    save_figure(ur.figure(), out_dir, "concept_unlearning")
    nums = {"related acc before": round(ur.before["related_acc"], 3),
            "unrelated acc before": round(ur.before["unrelated_acc"], 3)}
    for name, v in ur.methods.items():
        iv = v["intrinsic"][0]
        nums[name] = (f"cos {iv['cosine']:.4f}, relL2 {iv['rel_l2']:.4f}, Jaccard@{ur.k} {iv['jaccard']:.3f}; "
                      f"acc related {v['related_acc']:.3f}, unrelated {v['unrelated_acc']:.3f}")
    entries.append({
        "stem": "concept_unlearning", "title": f"Unlearning {CONCEPT!r}: the concept vector vs behaviour",
        "numbers": nums, "command": base_cmd,
        "caption": "Gradient ascent on text about the concept (all weights), Needle (noise + gradient ascent on "
                   "the vector only) and zeroing the vector: how far each moves the concept vector and the "
                   "accuracy on facts about the concept vs unrelated facts."})

    # ------------------------------------------------------------ 5. neuron maps of two checkpoints
    from .decode import MapComparison, compare_checkpoints
    rdir = res_root / "neuron_map_comparison"
    map_layers = [0, 29] if quick else list(range(0, 30, 3)) + [29]

    def compute_cmp():
        from ..concepts.unlearning import gradient_ascent_unlearn
        rel, _ = facts()
        ga, _ = gradient_ascent_unlearn(model, [f"{f.prompt} {f.attribute}." for f in rel] * 2, steps=steps)
        ga.name = f"{model.name} + gradient ascent ({steps} steps)"
        return compare_checkpoints(model, ga, layers=map_layers, directions=["out", "up"], k=10, bottom=False)

    mc = _load_or(rdir, MapComparison, model, base_cmd, compute_cmp)
    save_figure(mc.figure(), out_dir, "neuron_map_comparison")
    entries.append({
        "stem": "neuron_map_comparison", "title": "Neuron labels kept across checkpoints (default vs gradient ascent)",
        "numbers": {"layers": f"{mc.layers}", **{f"top-1 unchanged ({d})": round(v, 4)
                                                 for d, v in mc.overall_top1_unchanged.items()},
                    **{f"min over layers ({d})": round(min(mc.top1_unchanged[d]), 4) for d in mc.directions}},
        "command": "interp concepts compare --model-a default --model-b DIR_OF_FINETUNED --map-layers "
                   + ",".join(map(str, map_layers)),
        "caption": "Fraction of neurons whose top decoded token is the same in both checkpoints (Davies reports "
                   ">75% for Llama-3.1-8B base vs instruct); here the second checkpoint is a gradient-ascent copy."})
    return entries
