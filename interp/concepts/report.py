"""The concepts section of ``interp figures``: concept vectors, their causal check, unlearning.

The concept is "Japan" (terms japan / japanese / tokyo): ROME's known_1000 has ~50 facts whose
answer is Japan or Tokyo, of which the default model gets some right, which is what a causal
check on a 135M model needs.  The ConceptVectors dev concepts (Poland, Italy, …) give weaker
facts coverage for this model; their questions are used for the ROUGE-L part.  The last figure
compares the neuron maps (Davies 2025) of the model and of its gradient-ascent copy.

Results are kept with :func:`interp.results.cached` (keyed by their settings; quick mode in
``*_quick`` directories); ``model=None`` redraws only and names the command for anything
missing.  Captions and numbers are read from the results.
"""

from __future__ import annotations

import shlex
from pathlib import Path

CONCEPT = "Japan"
TERMS = ["japan", "japanese", "tokyo"]
KNOWN_1000 = "known_1000/known_1000.json"
CONCEPTS_FILE = "conceptvectors/llama2-7b_concepts_dev.json"
UNRELATED_CONCEPT = "Italy"


def _facts(model, quick):
    from ..datasets import data_dir, load_known_facts
    from .vectors import facts_for_concept
    facts, _ = load_known_facts(data_dir() / KNOWN_1000)
    return facts_for_concept(model, facts, TERMS, n_unrelated=12 if quick else 30, max_related=20)


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """Figures of ConceptVectors (Hong et al. 2024) on the default model, and a neuron-map comparison."""
    from ..datasets import data_dir, display_path
    from ..figures import save_figure
    from ..results import cached, result_dir
    from .unlearning import UnlearningResult, gradient_ascent_unlearn, unlearning_eval
    from .vectors import (CausalCheckResult, ConceptCandidates, causal_check, default_token_match,
                          find_concept_record, find_concept_vectors, load_concepts)

    out_dir = Path(out_dir)
    entries = []
    redo = f"interp figures --only concepts --out {display_path(out_dir)}" + (" --quick" if quick else "")

    # ------------------------------------------------------------ 1. candidate concept vectors
    rdir = result_dir(out_dir, "concept_candidates", quick)
    layers = [22, 23, 24, 28, 29] if quick else None
    st = {"concept": CONCEPT, "terms": TERMS, "k": 200, "layers": layers, "limit": 20}
    cmd = shlex.join(["interp", "concepts", "find", "--concept", CONCEPT, "--terms", *TERMS, "--top-k", "200",
                      "--limit", "20", *(["--layers", ",".join(map(str, layers))] if layers else []),
                      "--out", display_path(rdir)])
    cands = cached(ConceptCandidates, rdir, settings=st, model=model, command=cmd,
                   compute=lambda: find_concept_vectors(model, CONCEPT, terms=TERMS, k=200, layers=layers, limit=20))
    if cands.candidates:
        save_figure(cands.figure(), out_dir, "concept_candidates")
    top = cands.candidates[:2]
    entries.append({
        "stem": "concept_candidates", "title": f"Candidate concept vectors for {CONCEPT!r}",
        "numbers": {"layers searched": f"{cands.layers[0]}..{cands.layers[-1]} ({len(cands.layers)})",
                    "candidates": len(cands.candidates),
                    **{f"#{j + 1}": f"L{c['layer']}:{c['index']} score {c['score']}, matched {c['matched'][:4]} "
                       f"at ranks {c['matched_ranks'][:4]}" for j, c in enumerate(top)}},
        "command": cmd, "results": [rdir],
        "caption": (f"Value vectors ranked by how many of the words {', '.join(cands.terms)} sit in their "
                    f"top-{cands.k} vocabulary projection (no final norm), rank-weighted.")})
    vectors = [(c["layer"], c["index"]) for c in top[:1]]
    facts_cache: dict = {}

    def facts():
        if "x" not in facts_cache:
            facts_cache["x"] = _facts(model, quick)
        return facts_cache["x"]

    # ------------------------------------------------------------ 2. causal checks of the best vector
    checks = [("zero", 0.0)] if quick else [("noise", 0.1), ("noise", 1.0), ("zero", 0.0)]
    for mode, sigma in checks:
        tag = f"{mode}{'' if mode == 'zero' else str(sigma).replace('.', 'p')}"
        rdir = result_dir(out_dir, f"concept_causal_{tag}", quick)
        st = {"vectors": vectors, "mode": mode, "sigma": sigma, "qa": not quick, "max_new_tokens": 12}

        def compute_check(mode=mode, sigma=sigma):
            rel, unrel = facts()
            rec = find_concept_record(load_concepts(data_dir() / CONCEPTS_FILE), UNRELATED_CONCEPT)
            rq = [f.prompt.rstrip() + "?" for f in rel][:5]
            return causal_check(model, vectors, concept=CONCEPT, related_facts=rel, unrelated_facts=unrel,
                                related_questions=[] if quick else rq,
                                unrelated_questions=[] if quick else rec["QA"][:5],
                                mode=mode, sigma=sigma, max_new_tokens=12)

        cc = cached(CausalCheckResult, rdir, settings=st, model=model, command=redo, compute=compute_check)
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
        what = f"N(0, {cc.sigma}²) noise added to" if cc.mode == "noise" else "zeroing"
        entries.append({
            "stem": stem, "title": f"Causal check of the {CONCEPT} vector: {mode}" + (f" σ={sigma}" if mode == "noise" else ""),
            "numbers": nums, "command": None, "results": [rdir],
            "caption": (f"{fr.get('n', 0)} known facts about {CONCEPT} vs {fu.get('n', 0)} unrelated known facts "
                        f"(both answered correctly by the clean model), before and after {what} the vector "
                        f"{nums['vector']} in the weights"
                        + (f"; greedy answers to {sum(v['n'] for v in cc.qa.values())} questions compared with "
                           f"ROUGE-L." if cc.qa else "."))})

    # ------------------------------------------------------------ 3. unlearning: intrinsic vs behaviour
    rdir = result_dir(out_dir, "concept_unlearning", quick)
    steps = 3 if quick else 10
    st = {"vectors": vectors, "steps": steps, "sigma": 1.0}

    def compute_unlearning():
        from ..datasets import load_known_facts
        rel, unrel = facts()
        allf, _ = load_known_facts(data_dir() / KNOWN_1000)
        texts = [f"{f.prompt} {f.attribute}." for f in allf
                 if any(default_token_match(w, TERMS) for w in f.attribute.split())]
        return unlearning_eval(model, CONCEPT, vectors, texts=[" ".join(texts[i:i + 6]) for i in range(0, len(texts), 6)],
                               related_facts=rel, unrelated_facts=unrel, steps=steps, sigma=1.0)

    ur = cached(UnlearningResult, rdir, settings=st, model=model, command=redo, compute=compute_unlearning)
    save_figure(ur.figure(), out_dir, "concept_unlearning")
    nums = {"related acc before": round(ur.before["related_acc"], 3),
            "unrelated acc before": round(ur.before["unrelated_acc"], 3)}
    for name, v in ur.methods.items():
        iv = v["intrinsic"][0]
        nums[name] = (f"cos {iv['cosine']:.4f}, relL2 {iv['rel_l2']:.4f}, Jaccard@{ur.k} {iv['jaccard']:.3f}; "
                      f"acc related {v['related_acc']:.3f}, unrelated {v['unrelated_acc']:.3f}")
    entries.append({
        "stem": "concept_unlearning", "title": f"Unlearning {CONCEPT!r}: the concept vector vs behaviour",
        "numbers": nums, "command": None, "results": [rdir],
        "caption": (f"{', '.join(ur.methods)} ({ur.settings.get('steps')} steps where it trains): how far each "
                    f"moves the concept vector (cosine, relative L2, top-{ur.k} Jaccard) and the accuracy on "
                    f"{ur.before['n_related']} facts about the concept vs {ur.before['n_unrelated']} unrelated facts.")})

    # ------------------------------------------------------------ 4. neuron maps of two checkpoints
    from ..neurons.decode import MapComparison, compare_checkpoints
    rdir = result_dir(out_dir, "neuron_map_comparison", quick)
    map_layers = [0, 29] if quick else list(range(0, 30, 3)) + [29]
    st = {"layers": map_layers, "steps": steps, "directions": ["out", "up"], "k": 10}

    def compute_cmp():
        rel, _ = facts()
        ga, _ = gradient_ascent_unlearn(model, [f"{f.prompt} {f.attribute}." for f in rel] * 2, steps=steps)
        ga.name = f"{model.name} + gradient ascent ({steps} steps)"
        return compare_checkpoints(model, ga, layers=map_layers, directions=["out", "up"], k=10, bottom=False)

    mc = cached(MapComparison, rdir, settings=st, model=model, command=redo, compute=compute_cmp)
    save_figure(mc.figure(), out_dir, "neuron_map_comparison")
    entries.append({
        "stem": "neuron_map_comparison", "title": "Neuron labels kept across checkpoints (default vs gradient ascent)",
        "numbers": {"layers": f"{mc.layers}", **{f"top-1 unchanged ({d})": round(v, 4)
                                                 for d, v in mc.overall_top1_unchanged.items()},
                    **{f"min over layers ({d})": round(min(mc.top1_unchanged[d]), 4) for d in mc.directions}},
        "command": None, "results": [rdir],
        "caption": (f"Fraction of neurons whose top decoded token is the same in both checkpoints, layers "
                    f"{', '.join(map(str, mc.layers))} (Davies reports >75% for Llama-3.1-8B base vs instruct); "
                    f"the second checkpoint is {mc.model_b!r}.")})
    return entries
