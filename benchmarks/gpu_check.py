"""GPU check in one run (under 8 minutes on one GPU): CUDA vs CPU parity, bf16 vs fp32, speed ratios.

Prepared for a machine with a CUDA GPU; prints one JSON document (and writes it with ``--out``).

1. **CUDA vs CPU parity** (default model, float32): last-token logits of known_1000 prompts, a
   causal-trace grid (work-skipping path), a residual patching grid and a knockout sweep, each
   computed on both devices — max |difference|.
2. **bf16 vs fp32** on the GPU: top-1 agreement and max |Δp(top-1)| over the prompts; the trace
   grid's correlation and max |Δ| (probabilities are computed in float32 by every method); the
   normalised patching grid's max |Δ|; knockout relative changes' max |Δ|.
3. **Speed on the GPU** (each a ratio measured in this run): causal-trace grid, skipping path vs
   the bare batched forward of the same rows; residual patching vs TransformerLens'
   ``get_act_patch_resid_pre``; the whole-model neuron → vocabulary map vs the bare matmul floor.

    python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick     # dry run of the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PROMPTS = [
    ("The Eiffel Tower is located in the city of", "Eiffel Tower"),
    ("The Colosseum is located in the city of", "Colosseum"),
    ("The capital of Japan is the city of", "Japan"),
    ("Barack Obama was born in the state of", "Barack Obama"),
    ("The official language of Brazil is", "Brazil"),
    ("Rome is the capital of", "Rome"),
    ("The Statue of Liberty is located in the city of", "Statue of Liberty"),
    ("The Louvre is located in the city of", "Louvre"),
]
#: the figures job's pair: answers " Paris" vs " Moscow" (a Louvre corruption would answer " Paris" too,
#: and a logit difference of a token with itself measures nothing)
CLEAN, CORRUPT = "The Eiffel Tower is located in the city of", "The Kremlin Palace is located in the city of"


def sync(dev):
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev):
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - t


def analyses(m, samples: int, kinds, max_rows):
    from interp.attention.knockout import attention_knockout
    from interp.mediation import activation_patching, causal_trace
    lg = m.run([p for p, _ in PROMPTS]).logits.float().cpu()
    tr = causal_trace(m, CLEAN, "Eiffel Tower", kinds=kinds, samples=samples, max_rows=max_rows)
    pa = activation_patching(m, CLEAN, CORRUPT, sites="resid_pre", max_rows=max_rows)
    # with a BOS, as the figures job: without one, blocking position 0 (the attention sink) makes the
    # run unstable, and bf16 vs fp32 differ by 0.3 in relative change there (0.14 at most with it)
    ko = attention_knockout(m, CLEAN, subject="Eiffel Tower", max_rows=max_rows, bos=True)
    return {"logits": lg, "trace": tr, "patch": pa, "knock": ko}


def compare(a, b) -> dict:
    pa, pb = a["logits"].softmax(-1), b["logits"].softmax(-1)
    top_a, top_b = pa.argmax(-1), pb.argmax(-1)
    kinds = a["trace"].kinds
    ga = torch.stack([a["trace"].grid(k) for k in kinds]).nan_to_num()
    gb = torch.stack([b["trace"].grid(k) for k in kinds]).nan_to_num()
    corr = float(torch.corrcoef(torch.stack([ga.flatten(), gb.flatten()]))[0, 1])
    ka = torch.tensor([v for s in a["knock"].relative_change.values() for v in s])
    kb = torch.tensor([v for s in b["knock"].relative_change.values() for v in s])
    return {"logits_max_abs": float((a["logits"] - b["logits"]).abs().max()),
            "top1_agreement": float((top_a == top_b).float().mean()),
            "p_top1_max_abs": float((pa.gather(1, top_a[:, None]) - pb.gather(1, top_a[:, None])).abs().max()),
            "trace_max_abs": float((ga - gb).abs().max()), "trace_corr": corr,
            "patch_norm_max_abs": float((a["patch"].normalized("resid_pre") - b["patch"].normalized("resid_pre"))
                                        .abs().max()),
            "knockout_rel_max_abs": float((ka - kb).abs().max())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="2 samples, one trace kind, no TL, 3 map layers")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; run it on a GPU machine (or --device cpu for a dry run)",
              file=sys.stderr)
        return {}
    import interp
    from interp.mediation import activation_patching, causal_trace

    torch.set_grad_enabled(False)
    samples = 2 if args.quick else args.samples
    kinds = ("resid",) if args.quick else ("resid", "mlp", "attn")
    res: dict = {"device": dev, "torch": torch.__version__, "samples": samples, "kinds": list(kinds)}
    if torch.device(dev).type == "cuda":
        res["gpu"] = torch.cuda.get_device_name()
    t_all = time.perf_counter()

    # 1. CUDA vs CPU, float32
    cpu = interp.load(device="cpu")
    gpu32 = interp.load(device=dev)
    a_cpu = analyses(cpu, samples, kinds, 256)
    a_gpu, t32 = timed(lambda: analyses(gpu32, samples, kinds, None), dev)
    res["cuda_vs_cpu_fp32"] = compare(a_gpu, a_cpu)
    print(f"1. {dev} vs cpu (fp32): {res['cuda_vs_cpu_fp32']}", file=sys.stderr)
    del cpu

    # 2. bf16 vs fp32 on the device
    gpu16 = interp.load(device=dev, dtype="bfloat16")
    a16, t16 = timed(lambda: analyses(gpu16, samples, kinds, None), dev)
    res["bf16_vs_fp32"] = {**compare(a16, a_gpu), "t_fp32_s": t32, "t_bf16_s": t16}
    print(f"2. bf16 vs fp32: {res['bf16_vs_fp32']}", file=sys.stderr)
    del gpu16

    # 3. speed ratios on the device (float32)
    m = gpu32
    n = m.tokenize(CLEAN).lengths[0]
    tr, t_skip = timed(lambda: causal_trace(m, CLEAN, "Eiffel Tower", kinds=kinds, samples=samples), dev)
    rows = 1 + samples * (1 + len(kinds) * m.n_layers * (n - tr.subject_range[0]))
    b = m.tokenize([CLEAN]).select([0] * rows)
    _, t_floor = timed(lambda: m.run(b, logits=lambda lg: lg[:, 0]), dev)
    _, t_plan = timed(lambda: causal_trace(m, CLEAN, "Eiffel Tower", kinds=kinds, samples=samples, fast=False), dev)
    res["trace_speed"] = {"rows": rows, "t_skip_s": t_skip, "t_plan_s": t_plan, "t_floor_s": t_floor,
                          "skip_over_floor": t_skip / t_floor, "plan_over_floor": t_plan / t_floor}
    pa, t_pa = timed(lambda: activation_patching(m, CLEAN, CORRUPT, sites="resid_pre"), dev)
    res["patching_speed"] = {"t_ours_s": t_pa}
    if not args.quick:
        from transformer_lens import patching
        tl = interp.load(engine="transformer_lens", device=dev)
        bridge = tl.engine.bridge
        ct = torch.tensor([m.tokenize(CLEAN).token_ids(0)], device=dev)
        kt = torch.tensor([m.tokenize(CORRUPT).token_ids(0)], device=dev)
        _, cache = bridge.run_with_cache(ct)
        a_id = m.tokenizer(pa.answer, add_special_tokens=False)["input_ids"][0]
        w_id = m.tokenizer(pa.wrong, add_special_tokens=False)["input_ids"][0]
        grid, t_tl = timed(lambda: patching.get_act_patch_resid_pre(
            bridge, kt, cache, lambda lg: lg[0, -1, a_id] - lg[0, -1, w_id]), dev)
        res["patching_speed"].update(t_tl_s=t_tl, speedup_vs_tl=t_tl / t_pa,
                                     max_abs_vs_tl=float((grid.float().cpu() - pa.grid("resid_pre")).abs().max()))
        del tl, bridge, cache
    from interp.neurons.decode import check_directions, decode_directions, neuron_directions
    a = m.adapter
    layers = [0, a.n_layers // 2, a.n_layers - 1] if args.quick else list(range(a.n_layers))
    t_fl = t_map = 0.0
    for d in check_directions(a, None):
        for l in layers:
            D = neuron_directions(a, l, d).contiguous()
            _, t1 = timed(lambda: [D @ a.W_U[:, s:s + 8192] for s in range(0, a.vocab_size, 8192)], dev)
            _, t2 = timed(lambda: decode_directions(D, a.W_U, 10), dev)
            t_fl, t_map = t_fl + t1, t_map + t2
    res["neuron_map_speed"] = {"layers": len(layers), "t_floor_s": t_fl, "t_map_s": t_map, "ratio": t_map / t_fl}
    res["total_s"] = time.perf_counter() - t_all
    print(json.dumps(res, indent=1, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
