"""Benchmark: the whole-model neuron map vs the bare chunked-matmul floor (issue 5).

For every (direction, layer) matrix the script times, back to back on the same warm model,
(1) the floor — the same vocabulary-chunked matmuls ``D @ W_U[:, chunk]`` with nothing kept —
and (2) ``decode_directions`` (matmuls + exact running top-k and bottom-k), then sums both over
the model.  Interleaving the two per matrix keeps the ratio honest on a shared machine whose
load drifts.  It also times the public ``decode_neurons`` call end to end.

    .venv/bin/python benchmarks/bench_neurons.py            # whole default model, k=10
    .venv/bin/python benchmarks/bench_neurons.py --layers 0 15 29 --k 10
    .venv/bin/python benchmarks/bench_neurons.py --directions out up     # issue 10: out and up, all layers

Goal: ratio ≤ 1.3×.  On a GPU machine pass ``--model`` an 8B Llama (``--dtype bfloat16``) for
the large-model timing; none was available when this was written.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--layers", type=int, nargs="*", default=None)
    ap.add_argument("--directions", nargs="*", default=None, help="out / up / gate (default: all the MLP has)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--vocab-chunk", type=int, default=8192)
    ap.add_argument("--skip-end-to-end", action="store_true")
    args = ap.parse_args()

    import interp
    from interp.neurons.decode import check_directions, decode_directions, decode_neurons, neuron_directions

    model = interp.load(args.model, dtype=args.dtype)
    a = model.adapter
    layers = list(range(a.n_layers)) if args.layers is None else args.layers
    dirs = check_directions(a, args.directions)
    W_U = a.W_U
    sync = torch.cuda.synchronize if W_U.is_cuda else (lambda: None)
    t_floor = t_ours = 0.0
    with torch.no_grad():
        D = neuron_directions(a, layers[0], dirs[0]).contiguous()
        decode_directions(D, W_U, args.k, vocab_chunk=args.vocab_chunk)  # warm-up
        for d in dirs:
            for l in layers:
                D = neuron_directions(a, l, d).contiguous()
                sync(); t0 = time.perf_counter()
                for s in range(0, a.vocab_size, args.vocab_chunk):
                    x = D @ W_U[:, s:s + args.vocab_chunk]
                sync(); t1 = time.perf_counter()
                decode_directions(D, W_U, args.k, vocab_chunk=args.vocab_chunk)
                sync(); t2 = time.perf_counter()
                t_floor += t1 - t0
                t_ours += t2 - t1
    del x
    res = {"model": model.name, "device": str(W_U.device), "dtype": args.dtype, "threads": torch.get_num_threads(),
           "layers": len(layers), "directions": dirs, "neurons": a.d_mlp, "vocab": a.vocab_size, "k": args.k,
           "floor_s": round(t_floor, 2), "map_s": round(t_ours, 2), "ratio": round(t_ours / t_floor, 3)}
    if not args.skip_end_to_end:
        t0 = time.perf_counter()
        nm = decode_neurons(model, layers=layers, directions=dirs, k=args.k)
        res["decode_neurons_end_to_end_s"] = round(time.perf_counter() - t0, 2)
        res["map_shape"] = list(nm.top_ids.shape)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
