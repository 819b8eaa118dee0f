"""CLI: ``interp neurons decode|search|stats|clamp`` (``interp concepts …`` is :mod:`interp.concepts.cli`).

Every command writes its result (JSON + safetensors) and figure under ``--out`` and, with
``--json``, prints a stable JSON summary.  ``neurons decode`` also writes ``DIR/neurons.json``: a
list with one entry per (layer, neuron, direction) holding ``layer``, ``neuron``, ``direction``,
``top_tokens``, ``top_ids``, ``top_scores`` (and ``bottom_tokens``/``bottom_scores``).
"""

from __future__ import annotations

import json

from ..clitools import add_index_arg, layer_index_pairs, load_model, out_dir, save_result
from ..errors import InterpError


# ---------------------------------------------------------------------- neurons
def _cmd_decode(args) -> dict:
    from .decode import decode_neurons
    model = load_model(args)
    nmap = decode_neurons(model, layers=args.layers, directions=args.directions, k=args.top_k,
                          final_norm=args.final_norm, bottom=not args.no_bottom, progress=not args.json)
    out = out_dir(args, "neurons")
    paths = save_result(nmap, None, args, "neurons")
    entries = nmap.entries(model.tokenizer)
    table = out / "neurons.json"
    table.write_text(json.dumps(entries, ensure_ascii=False, separators=(",", ":")))
    paths["table"] = str(table)
    summary = {"model": nmap.model, "layers": nmap.layers, "directions": nmap.directions, "k": nmap.k,
               "final_norm": nmap.final_norm, "n_entries": len(entries), "seconds": round(nmap.seconds, 3),
               "sample": entries[:3], "files": paths}
    if not args.json:
        print(f"decoded {len(entries)} neuron directions in {nmap.seconds:.1f} s → {table}")
        for e in entries[:5]:
            print(f"L{e['layer']} N{e['neuron']} {e['direction']}: {e['top_tokens'][:8]}")
    return summary


def _load_or_decode(args, model):
    from .decode import NeuronMap, decode_neurons
    if args.map:
        return NeuronMap.load(args.map, make_hint="interp neurons decode --out DIR")
    return decode_neurons(model, layers=args.layers, directions=[args.direction] if args.direction else None,
                          k=args.top_k, final_norm=args.final_norm, progress=not args.json)


def _cmd_search(args) -> dict:
    from .decode import resolve_tokens, vocab_strings
    model = load_model(args)
    query = args.word if args.word is not None else args.token
    if query is None:
        raise InterpError("give --token ' Paris' (one token) or --word paris")
    ids = resolve_tokens(model.tokenizer, query, word=args.word is not None)
    nmap = _load_or_decode(args, model)
    hits = nmap.search(ids, direction=args.direction, side=args.side, limit=args.limit)
    vocab = vocab_strings(model.tokenizer, nmap.vocab_size)
    for h in hits:
        h["token"] = vocab[h["token_id"]]
    out = out_dir(args, "neurons")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "search.json"
    summary = {"query": query, "token_ids": ids, "tokens": [vocab[i] for i in ids], "side": args.side,
               "k": nmap.k, "final_norm": nmap.final_norm, "n_hits": len(hits), "hits": hits}
    path.write_text(json.dumps(summary, ensure_ascii=False, indent=1))
    summary["files"] = {"result": str(path)}
    if not args.json:
        if not hits:
            print(f"no neuron has {query!r} in its top-{nmap.k} tokens")
        for h in hits[:20]:
            print(f"L{h['layer']:2d} N{h['neuron']:5d} {h['direction']:4s} rank {h['rank']:3d} "
                  f"score {h['score']:.3f}  {h['token']!r}")
    return summary


def _cmd_stats(args) -> dict:
    from pathlib import Path

    from ..figures import save_figure
    from .stats import neuron_stats
    model = load_model(args)
    out = out_dir(args, "neuron_stats")
    ck = out / "state"  # every run is resumable: rerun with the same --out after a kill
    corpus = [Path(c) for c in args.corpus]
    st = neuron_stats(model, corpus, layers=args.layers, text_field=args.text_field, max_len=args.max_len,
                      batch_size=args.batch_size, max_tokens=args.max_tokens, signals=args.signals,
                      threshold=args.threshold, threshold_kind=args.threshold_kind, detector_top=args.detector_top,
                      detector_share=args.detector_share, positional_eta2=args.positional_eta2,
                      calib_every=args.calib_every, max_candidates=args.max_candidates, checkpoint_dir=ck,
                      save_every=args.save_every, main_batches=args.main_batches, top_up=not args.no_top_up,
                      progress=not args.json)
    paths = save_result(st, None, args, "neuron_stats")
    paths["figures"] = {stem: save_figure(fig, out, stem) for stem, fig in st.figures().items()}
    totals = {k: int(getattr(st, k).sum()) for k in ("dead", "rare", "token_detector", "bigram_detector",
                                                      "positional")}
    summary = {"model": st.model, "corpus": st.corpus, "n_tokens": st.n_tokens, "signals": st.signals,
               "threshold": st.threshold, "tau": {s: st.tau[i].tolist() for i, s in enumerate(st.signals)},
               "layers": st.layers, "per_layer": st.per_layer, "totals": totals, "search": st.search,
               "seconds": st.seconds, "detectors": st.detectors[:5], "files": paths}
    if not args.json:
        print(f"{st.n_tokens:,} tokens; " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in totals.items()))
    return summary


def _cmd_clamp(args) -> dict:
    from .clamp import clamp_effect
    model = load_model(args)
    res = clamp_effect(model, args.prompt, layer_index_pairs(args.neuron, "layer:neuron"), args.value, args.target,
                       positions=args.positions)
    paths = save_result(res, "neuron_clamp", args, "neuron_clamp")
    summary = {"prompt": args.prompt, "neurons": res.neurons, "values": res.values, "target": res.target,
               "p_clean": res.p_clean.tolist(), "p_clamped": res.p_clamped.tolist(), "files": paths}
    if not args.json:
        for v, p in zip(res.values, res.p_clamped[:, 0].tolist()):
            print(f"value {v:g}: p({res.target!r}) {float(res.p_clean[0]):.3g} → {p:.3g}")
    return summary


def register(sub, common) -> None:
    """Add ``interp neurons decode|search|stats|clamp`` to the command line."""
    p = sub.add_parser("neurons", help="MLP neurons: decode through the LM head, search, statistics, clamp")
    ns = p.add_subparsers(dest="neurons_command", required=True)

    q = ns.add_parser("decode", parents=[common], help="top/bottom tokens of every neuron direction")
    add_index_arg(q, "--layers", "layer", "layers")
    q.add_argument("--top-k", type=int, default=10)
    q.add_argument("--directions", nargs="*", default=None, choices=["out", "up", "gate"])
    q.add_argument("--final-norm", default="none", choices=["none", "gain"])
    q.add_argument("--no-bottom", action="store_true")
    q.set_defaults(func=_cmd_decode)

    q = ns.add_parser("search", parents=[common], help="which neurons promote a token?")
    q.add_argument("--token", default=None, help="one token, e.g. ' Paris'")
    q.add_argument("--word", default=None, help="a word: every token spelling it (any case/space)")
    q.add_argument("--map", default=None, help="directory of a saved map (interp neurons decode --out DIR)")
    add_index_arg(q, "--layers", "layer", "layers")
    q.add_argument("--top-k", type=int, default=10)
    q.add_argument("--direction", default=None, choices=["out", "up", "gate"])
    q.add_argument("--final-norm", default="none", choices=["none", "gain"])
    q.add_argument("--side", default="top", choices=["top", "bottom"])
    q.add_argument("--limit", type=int, default=50)
    q.set_defaults(func=_cmd_search)

    q = ns.add_parser("stats", parents=[common], help="dead, rare, n-gram-detector and positional neurons on a corpus")
    q.add_argument("--corpus", required=True, nargs="+", help="files (.json/.jsonl/.txt) or directories of texts")
    q.add_argument("--text-field", default=None)
    q.add_argument("--threshold", type=float, default=0.01,
                   help="energy: share of a layer's energy below τ_l (default 0.01); abs: |a| ≥ threshold")
    q.add_argument("--threshold-kind", default="energy", choices=["energy", "abs"])
    q.add_argument("--signals", nargs="+", default=None, choices=["gate", "up", "post"],
                   help="default: gate up post for a gated MLP (post only skips recomputing gate and up)")
    add_index_arg(q, "--layers", "layer", "layers")
    q.add_argument("--max-tokens", type=int, default=None)
    q.add_argument("--max-len", type=int, default=128)
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--detector-top", type=int, default=3)
    q.add_argument("--detector-share", type=float, default=0.5)
    q.add_argument("--positional-eta2", type=float, default=0.5)
    q.add_argument("--calib-every", type=int, default=10)
    q.add_argument("--max-candidates", type=int, default=4096)
    q.add_argument("--main-batches", type=int, default=None,
                   help="cut the main pass short after this many batches (the whole corpus did not fit the time)")
    q.add_argument("--no-top-up", action="store_true",
                   help="skip the top-up pass; neurons only it could resolve are reported unresolved")
    q.add_argument("--save-every", type=int, default=16,
                   help="batches between two state snapshots (a kill loses at most this many)")
    q.set_defaults(func=_cmd_stats)

    q = ns.add_parser("clamp", parents=[common], help="clamp neurons, measure a token's probability")
    q.add_argument("--prompt", required=True)
    q.add_argument("--neuron", nargs="+", required=True, help="layer:neuron pairs, e.g. 20:1090")
    q.add_argument("--value", type=float, nargs="+", default=[10.0])
    q.add_argument("--target", required=True)
    add_index_arg(q, "--positions", "position", "positions to clamp, -1 = last")
    q.set_defaults(func=_cmd_clamp)
