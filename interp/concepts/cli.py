"""CLI: ``interp concepts find|compare`` — concept vectors (ConceptVectors, Hong et al. 2024).

``find`` ranks value vectors whose top-k vocabulary projection matches a concept and writes
``DIR/concept_candidates.json`` (+ figure); ``compare`` measures how far each vector moved
between two checkpoints (cosine, relative L2, top-k Jaccard) and, with ``--map-layers``, how many
neurons keep their top decoded token (Davies 2025), into ``DIR/concept_compare.json``.
"""

from __future__ import annotations

import json

from ..clitools import add_index_arg, index_type, layer_index_pairs, load_model, out_dir, save_result


def _cmd_find(args) -> dict:
    from ..neurons.decode import NeuronMap
    from .vectors import find_concept_vectors
    model = load_model(args)
    nmap = NeuronMap.load(args.map) if args.map else None
    res = find_concept_vectors(model, args.concept, terms=args.terms, k=args.top_k, nmap=nmap, layers=args.layers,
                               limit=args.limit, progress=not args.json)
    paths = save_result(res, "concept_candidates" if res.candidates else None, args, "concepts")
    if not args.json:
        print(res.message)
        for c in res.candidates[:10]:
            print(f"L{c['layer']}:{c['index']} score {c['score']:.2f} matched {c['matched'][:5]}")
    return {"concept": res.concept, "terms": res.terms, "k": res.k, "n_candidates": len(res.candidates),
            "message": res.message, "candidates": res.candidates, "files": paths}


def _model_arg(name):
    return None if name in (None, "default") else name


def _cmd_compare(args) -> dict:
    from ..loading import load
    from ..neurons.decode import check_same_shape, compare_maps, decode_neurons
    from .unlearning import intrinsic_compare
    from .vectors import find_concept_vectors
    ma = load(_model_arg(args.model_a), device=args.device, dtype=args.dtype)
    mb = load(_model_arg(args.model_b), device=args.device, dtype=args.dtype)
    check_same_shape(ma.adapter, mb.adapter, args.model_a, args.model_b)
    vectors = layer_index_pairs(args.vectors)
    found = None
    if args.concept and not vectors:
        found = find_concept_vectors(ma, args.concept, terms=args.terms, k=args.top_k, layers=args.layers,
                                     limit=args.limit)
        vectors = [(c["layer"], c["index"]) for c in found.candidates]
    rows = intrinsic_compare(ma, mb, vectors, k=args.top_k) if vectors else []
    summary = {"model_a": args.model_a, "model_b": args.model_b, "k": args.top_k, "vectors": rows}
    if found is not None:
        summary["concept"] = {"concept": found.concept, "terms": found.terms, "message": found.message}
    out = out_dir(args, "concepts")
    paths = {}
    if args.map_layers is not False:  # given; None = all layers
        kw = dict(layers=args.map_layers, k=10, bottom=False)
        cmp = compare_maps(decode_neurons(ma, **kw), decode_neurons(mb, **kw))
        cmp.model_a, cmp.model_b = args.model_a, args.model_b
        paths = save_result(cmp, "neuron_map_comparison", args, "concepts")
        summary["maps"] = {"layers": cmp.layers, "top1_unchanged": cmp.top1_unchanged,
                           "overall_top1_unchanged": cmp.overall_top1_unchanged}
    out.mkdir(parents=True, exist_ok=True)
    (out / "concept_compare.json").write_text(json.dumps(summary, indent=1))
    paths["result"] = str(out / "concept_compare.json")
    summary["files"] = paths
    if not args.json:
        if not rows:
            print("no vectors compared (give --vectors L:I ... or --concept C)")
        for r in rows:
            print(f"L{r['layer']}:{r['index']} cos {r['cosine']:.4f} relL2 {r['rel_l2']:.4f} "
                  f"Jaccard@{args.top_k} {r['jaccard']:.3f}")
    return summary


def register(sub, common) -> None:
    """Add ``interp concepts find`` and ``interp concepts compare`` to the command line."""
    p = sub.add_parser("concepts", help="concept vectors (ConceptVectors): find, compare checkpoints")
    cs = p.add_subparsers(dest="concepts_command", required=True)
    q = cs.add_parser("find", parents=[common], help="value vectors whose top-k tokens match a concept")
    q.add_argument("--concept", required=True)
    q.add_argument("--terms", nargs="*", default=None)
    q.add_argument("--top-k", type=int, default=200)
    add_index_arg(q, "--layers", "layer", "layers")
    q.add_argument("--map", default=None, help="saved map with direction out, final_norm none, k ≥ --top-k")
    q.add_argument("--limit", type=int, default=20)
    q.set_defaults(func=_cmd_find)

    q = cs.add_parser("compare", parents=[common], help="intrinsic comparison of two checkpoints")
    q.add_argument("--model-a", required=True, help="'default', an HF id or a local directory")
    q.add_argument("--model-b", required=True)
    q.add_argument("--vectors", nargs="*", default=None, help="layer:index pairs")
    q.add_argument("--concept", default=None, help="find vectors for this concept on model A")
    q.add_argument("--terms", nargs="*", default=None)
    add_index_arg(q, "--layers", "layer", "layers")
    q.add_argument("--limit", type=int, default=5)
    q.add_argument("--top-k", type=int, default=200)
    q.add_argument("--map-layers", type=index_type("layer"), default=False, metavar="LAYERS",
                   help="also compare the neuron maps (top-1 unchanged per layer) on these layers "
                        "(e.g. 0-9,29 or all)")
    q.set_defaults(func=_cmd_compare)
