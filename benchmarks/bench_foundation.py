"""Foundation benchmark: forward and caching cost per engine, as ratios to the plain HF forward.

Measured in one run on the default model (SmolLM2-135M-Instruct), one batch of prompts:
  plain   — ``hf_model(input_ids, attention_mask, position_ids)`` with no hooks at all
  <engine> forward        — ``model.run(batch)`` through the engine, nothing cached
  <engine> cache resid    — ``model.run(batch, reads="resid_post")`` (all 30 layers, all positions)
Each timing is the median of ``--repeat`` runs after a warm-up.  Goal: caching ≤ 1.1× plain.

    .venv/bin/python benchmarks/bench_foundation.py [--batch 16] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import interp

PROMPTS = ["The Eiffel Tower is located in the city of", "The mother tongue of Danielle Darrieux is",
           "Vinson Massif is located in the continent of", "Beats Music is owned by",
           "The capital of Japan is the city of", "Toko Yasuda produces the most amazing music on the"]


def interleaved(fns: dict, repeat: int) -> dict:
    """Median time of each function, measured round-robin so load drifts hit all alike."""
    for f in fns.values():
        f()
    ts = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    prompts = (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch]
    models = {e: interp.load(engine=e) for e in ("hf", "transformer_lens", "nnsight")}
    ref = models["hf"]
    b = ref.tokenize(prompts)
    ids, mask, pos = b.input_ids, b.attention_mask, b.position_ids
    fns = {"plain HF forward": lambda: ref.hf(input_ids=ids, attention_mask=mask, position_ids=pos,
                                              use_cache=False)}
    for e, m in models.items():
        fns[f"{e} forward"] = lambda m=m: m.run(b, logits="all")
        fns[f"{e} cache resid_post x30"] = lambda m=m: m.run(b, reads="resid_post", logits="all",
                                                             cache_device=None)
    t = interleaved(fns, args.repeat)
    plain = t["plain HF forward"]
    print(f"device={ref.device} threads={torch.get_num_threads()} batch={b.size}x{b.width} tokens, "
          f"median of {args.repeat}")
    for k, v in t.items():
        print(f"{k:36s} {v * 1e3:8.1f} ms   {v / plain:5.2f}x plain")


if __name__ == "__main__":
    main()
