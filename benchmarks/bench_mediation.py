"""Causal mediation benchmark: every ratio measured within this one run (prints JSON).

(a) residual patching sweep (resid_pre, every layer × position, denoising) on the default model vs
    TransformerLens 4.x ``transformer_lens.patching.get_act_patch_resid_pre`` on the TL engine's
    ``TransformerBridge``: max |difference| (asserted ≤ 1e-4, every cell) and speed ratio; also the
    plan path (every row in full, ``fast=False``) and the bare batched forward of the same rows (the
    floor).  Cells at positions the two prompts share are not run by either of our paths (their
    value is the corrupt metric; :func:`interp.mediation.patching.shared_prefix`): ``cells_run``.
(b) causal-trace grid (3 kinds, ``--samples``) vs the bare batched forward of the same number of
    rows (the floor), skipping path (``fast=True``) and plan path, on the default model and on
    random-weight gpt2 and qwen2 models of the default model's size (timing ratios need no
    trained weights); skipping == plan asserted to 1e-5.
(c) AtP vs full patching (resid_pre, attn_out, mlp_out): time ratio and Spearman correlation.

The target ratios ((a) ours vs TL, (b) skipping vs floor) keep the fastest of ``--repeat`` runs of
both sides (default 2; in (b) the two sides alternate); the plan path and (c) run once.

Run: ``.venv/bin/python benchmarks/bench_mediation.py [--samples 2] [--archs default,gpt2,qwen2]``
(``--archs none --skip-atp``: (a) only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


REPEAT = 1


def timed(fn, repeat: int | None = None):
    """``(fn(), seconds)``: the fastest of ``repeat`` runs (default :data:`REPEAT`, set by
    ``--repeat``), as ``timeit`` advises — on a shared machine the slower runs measure the
    neighbours.  Both sides of every ratio get the same number of runs."""
    best = float("inf")
    for _ in range(repeat or REPEAT):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def floor_forward(model, prompt: str, n_rows: int, max_rows: int, repeat: int | None = None) -> float:
    """Bare batched forward of ``n_rows`` copies of the prompt, last-token logits only."""
    b = model.tokenize([prompt]).select([0] * n_rows)
    _, t = timed(lambda: model.run(b, logits=lambda lg: lg[:, 0], max_rows=max_rows), repeat)
    return t


def similar_random_model(ref, arch: str):
    """A random-weight ``arch`` model with the reference model's sizes (layers, width, heads, MLP,
    vocabulary) and its tokenizer: speed ratios need no trained weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    from interp.model import Model
    a = ref.adapter
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=a.vocab_size, n_embd=a.d_model, n_layer=a.n_layers, n_head=a.n_heads,
                         n_inner=a.d_mlp, n_positions=2048, attn_implementation="eager")
        hf = GPT2LMHeadModel(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=a.vocab_size, hidden_size=a.d_model, num_hidden_layers=a.n_layers,
                          num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
                          intermediate_size=a.d_mlp, max_position_embeddings=2048, attn_implementation="eager")
        hf = Qwen2ForCausalLM(cfg)
    else:
        raise SystemExit(f"unknown arch {arch!r}: use default, gpt2 or qwen2")
    hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    return Model(hf, ref.tokenizer, "hf", name=f"random-{arch}-{sum(p.numel() for p in hf.parameters()) // 10**6}M")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clean", default="The Eiffel Tower is located in the city of")
    ap.add_argument("--corrupt", default="The Kremlin Palace is located in the city of")
    ap.add_argument("--subject", default="Eiffel Tower")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--kinds", default="resid,mlp,attn")
    ap.add_argument("--max-rows", type=int, default=64)
    ap.add_argument("--corrupt-no-shared", default="A Louvre Museum is located in the city of",
                    help="(a) timed again with this corruption, which shares no position with --clean")
    ap.add_argument("--archs", default="default,gpt2,qwen2", help="models for (b); 'none' skips (b)")
    ap.add_argument("--skip-atp", action="store_true", help="skip (c)")
    ap.add_argument("--skip-tl", action="store_true")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    ap.add_argument("--repeat", type=int, default=2, help="time every measured call this many times, keep "
                    "the fastest (both sides of each ratio alike)")
    args = ap.parse_args(argv)
    global REPEAT
    REPEAT = args.repeat

    import interp
    from interp.mediation import activation_patching, attribution_patching, causal_trace
    from interp.mediation.attribution import compare_with_patching

    torch.set_grad_enabled(False)
    res: dict = {"threads": torch.get_num_threads(), "repeat": args.repeat}
    hf = interp.load(engine="hf")
    clean, corrupt = args.clean, args.corrupt
    n = hf.tokenize(clean).lengths[0]
    if hf.tokenize(corrupt).lengths[0] != n:
        corrupt = "The Louvre Museum is located in the city of"
    assert hf.tokenize(corrupt).lengths[0] == n, "pick a corrupt prompt of equal token length"
    L = hf.n_layers
    res.update(model=hf.name, prompt=clean, corrupt=corrupt, n_tokens=n, n_layers=L)
    print(f"model {hf.name}: {L} layers, {n} tokens; torch threads {res['threads']}", file=sys.stderr)

    # ---------------------------------------------------------------- (a)
    def metric_ours(lg):
        return lg[:, ans].float() - lg[:, wrong].float()

    lg = hf.run([clean, corrupt]).logits
    ans, wrong = int(lg[0].argmax()), int(lg[1].argmax())
    ans_s, wrong_s = hf.tokenizer.decode([ans]), hf.tokenizer.decode([wrong])
    fast, t_fast = timed(lambda: activation_patching(hf, clean, corrupt, sites="resid_pre", answer=ans_s,
                                                     wrong=wrong_s, fast=True, max_rows=args.max_rows))
    plan, t_plan = timed(lambda: activation_patching(hf, clean, corrupt, sites="resid_pre", answer=ans_s,
                                                     wrong=wrong_s, fast=False, max_rows=args.max_rows), repeat=1)
    t_floor = floor_forward(hf, corrupt, L * n, args.max_rows)
    # the same sweep where no position is shared (every cell runs): what the shared-prefix rule saves
    alone = args.corrupt_no_shared
    assert hf.tokenize(alone).lengths[0] == n and hf.tokenize(alone).token_ids(0)[0] != hf.tokenize(clean).token_ids(0)[0]
    # (its own top-1 is " Paris" too: the metric keeps the main sweep's answer tokens; the timing is the same)
    every, t_every = timed(lambda: activation_patching(hf, clean, alone, sites="resid_pre", answer=ans_s,
                                                       wrong=wrong_s, fast=True, max_rows=args.max_rows))
    assert every.settings["cells_run"] == every.settings["cells"]
    ours = fast.grid("resid_pre")
    res["a"] = {"rows": L * n, "t_fast_s": t_fast, "t_plan_s": t_plan, "t_floor_s": t_floor,
                "fast_vs_plan_max_abs": float((ours - plan.grid("resid_pre")).abs().max()),
                "cells": fast.settings["cells"], "cells_run": fast.settings["cells_run"],
                "shared_prefix": fast.settings["shared_prefix"], "corrupt_no_shared": alone,
                "t_fast_every_cell_s": t_every}
    print(f"(a) ours fast {t_fast:.2f}s, plan {t_plan:.2f}s, bare forward of {L * n} rows {t_floor:.2f}s; "
          f"{fast.settings['cells_run']} of {fast.settings['cells']} cells run (the first "
          f"{fast.settings['shared_prefix']} positions are the same tokens in both prompts)", file=sys.stderr)
    if not args.skip_tl:
        from transformer_lens import patching
        tlm = interp.load(engine="transformer_lens")
        bridge = tlm.engine.bridge
        ct = torch.tensor([hf.tokenize(clean).token_ids(0)])
        kt = torch.tensor([hf.tokenize(corrupt).token_ids(0)])
        _, cache = bridge.run_with_cache(ct)

        def tl_metric(logits):
            return logits[0, -1, ans] - logits[0, -1, wrong]
        tl_grid, t_tl = timed(lambda: patching.get_act_patch_resid_pre(bridge, kt, cache, tl_metric))
        tl_grid = tl_grid.float().cpu()
        d = float((tl_grid - ours).abs().max())
        assert d <= 1e-4, f"TransformerLens and interp differ by {d}"
        res["a"].update(t_tl_s=t_tl, tl_vs_ours_max_abs=d, speedup_fast_vs_tl=t_tl / t_fast,
                        speedup_every_cell_vs_tl=t_tl / t_every,
                        speedup_plan_vs_tl=t_tl / t_plan, tl_shape=list(tl_grid.shape))
        print(f"(a) TL get_act_patch_resid_pre {t_tl:.2f}s; max|TL − ours| = {d:.2e}; "
              f"speed-up fast {t_tl / t_fast:.1f}×, plan {t_tl / t_plan:.1f}×; with no shared position "
              f"(every cell run, {t_every:.2f}s) {t_tl / t_every:.1f}×", file=sys.stderr)
        del tlm, bridge, cache

    # ---------------------------------------------------------------- (b)
    kinds = tuple(args.kinds.split(","))
    res["b"] = {}
    for arch in ([] if args.archs == "none" else args.archs.split(",")):
        m = hf if arch == "default" else similar_random_model(hf, arch)
        tr_plan, tp = timed(lambda: causal_trace(m, clean, args.subject, kinds=kinds, samples=args.samples,
                                                 fast=False, max_rows=args.max_rows), repeat=1)
        first = tr_plan.subject_range[0]
        n_rows = 1 + args.samples * (1 + len(kinds) * L * (n - first))
        # the two sides of the target ratio alternate (floor, skipping, floor, …): load that drifts
        # over minutes on a shared machine then weighs on both alike; the fastest of each is kept
        tf = t_fl = float("inf")
        for _ in range(REPEAT):
            t_fl = min(t_fl, floor_forward(m, clean, n_rows, args.max_rows, repeat=1))
            tr_fast, t = timed(lambda: causal_trace(m, clean, args.subject, kinds=kinds, samples=args.samples,
                                                    fast=True, max_rows=args.max_rows), repeat=1)
            tf = min(tf, t)
        assert tr_fast.settings["path"].startswith("skip") and tr_plan.settings["path"].startswith("plan")
        dmax = max(float((tr_fast.grid(k) - tr_plan.grid(k)).abs().nan_to_num().max()) for k in kinds)
        assert dmax <= 1e-5, f"{arch}: skipping and plan paths differ by {dmax}"
        res["b"][arch] = {"model": m.name, "rows": n_rows, "kinds": list(kinds), "samples": args.samples,
                          "t_plan_s": tp, "t_fast_s": tf, "t_floor_s": t_fl, "plan_over_floor": tp / t_fl,
                          "fast_over_floor": tf / t_fl, "fast_vs_plan_max_abs": dmax,
                          "p_clean": tr_plan.p_clean, "p_corrupt": tr_plan.p_corrupt}
        print(f"(b) {arch}: trace {n_rows} rows: plan {tp:.2f}s ({tp / t_fl:.2f}× floor), skipping {tf:.2f}s "
              f"({tf / t_fl:.2f}× floor), floor {t_fl:.2f}s; max|skip − plan| {dmax:.1e}", file=sys.stderr)

    # ---------------------------------------------------------------- (c)
    sites = ("resid_pre", "attn_out", "mlp_out")
    if not args.skip_atp:
        full, t_full = timed(lambda: activation_patching(hf, clean, corrupt, sites=sites, answer=ans_s,
                                                         wrong=wrong_s, fast=False, max_rows=args.max_rows), repeat=1)
        atp, t_atp = timed(lambda: attribution_patching(hf, clean, corrupt, sites=sites, answer=ans_s,
                                                        wrong=wrong_s), repeat=1)
        rho = compare_with_patching(atp, full)
        res["c"] = {"t_patching_s": t_full, "t_atp_s": t_atp, "speedup": t_full / t_atp, "spearman": rho,
                    "cells": sum(full.grid(s).numel() for s in sites)}
        print(f"(c) AtP {t_atp:.2f}s vs patching {t_full:.2f}s ({t_full / t_atp:.0f}×); Spearman {rho}",
              file=sys.stderr)
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
