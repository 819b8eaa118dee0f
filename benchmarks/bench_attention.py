"""Benchmark: a full attention-knockout sweep as batched rows vs one forward per layer.

The sweep is every centre layer × 3 source sets (subject, non_subject, last) on the default
model, plus the clean row.  Three timings, in one run (batched and bare interleaved, best of ``--repeat``):

* **batched**: :func:`interp.attention.attention_knockout` — all rows in one plan, one chunked
  forward (``max_rows`` rows per chunk);
* **per layer**: the same knockouts, one single-row forward per (set, layer) — the loop a naive
  implementation runs (timed once: it is the slow one);
* **bare**: ``model.run`` over the same rows (same batch, same chunking) with no edits at all —
  the floor plain batching can reach.

Prints the ratios per-layer / batched (speed-up) and batched / bare (overhead of the edits; goal
≤ 1.3×).  Run: ``.venv/bin/python benchmarks/bench_attention.py [--repeat 3] [--max-rows 64]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import interp
from interp.attention import attention_knockout, knockout_logits, source_positions
from interp.windows import default_window, window_layers

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "The Eiffel Tower"


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-rows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = interp.load()
    L = model.n_layers
    k = default_window(L)
    t, sets, _, _ = source_positions(model, PROMPT, ["subject", "non_subject", "last"], subject=SUBJECT)
    wins = [window_layers(c, k, L) for c in range(L)]
    rows = 1 + len(sets) * L
    n_tok = model.tokenize(PROMPT).lengths[0]
    print(f"{model!r}\nprompt: {n_tok} tokens; {len(sets)} sets × {L} layers + clean = {rows} rows; "
          f"window {k}; max_rows {args.max_rows}; torch threads {torch.get_num_threads()}")

    def batched():
        return attention_knockout(model, PROMPT, list(sets), subject=SUBJECT, max_rows=args.max_rows)

    def per_layer():
        out = [knockout_logits(model, PROMPT, [[]], [[]])]
        for pos in sets.values():
            for w in wins:
                out.append(knockout_logits(model, PROMPT, [pos], [w]))
        return torch.cat(out)

    base = model.tokenize(PROMPT).select([0] * rows)

    def bare():
        return model.run(base, max_rows=args.max_rows)

    # warm-up, and the two implementations agree
    r = batched()
    lg = per_layer()
    p = lg.softmax(-1)[:, r.answer_id]
    flat = [r.p_clean] + [v for s in sets for v in r.p_knockout[s]]
    err = (p - torch.tensor(flat)).abs().max().item()
    bare()
    # interleave batched and bare (best of --repeat each) so a change of machine load hits both;
    # the per-layer loop (the slow one) runs once, between them
    tb, t0 = float("inf"), float("inf")
    for i in range(args.repeat):
        t0 = min(t0, best(bare, 1))
        tb = min(tb, best(batched, 1))
        if i == 0:
            tl = best(per_layer, 1)
    print(f"max |p_batched − p_per_layer| = {err:.2e}")
    print(f"batched knockout sweep : {tb:7.3f} s")
    print(f"one forward per layer  : {tl:7.3f} s   → per-layer / batched = {tl / tb:5.2f}×")
    print(f"bare batched forward   : {t0:7.3f} s   → batched / bare      = {tb / t0:5.2f}× (goal ≤ 1.3×)")


if __name__ == "__main__":
    main()
