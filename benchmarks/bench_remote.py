"""Remote path benchmark: ``remote="local"`` vs the local nnsight engine, ratios measured in this run.

On the default model, each workload runs on (a) the nnsight engine with ``remote=False`` (Python
hooks inside a local trace), (b) the same engine with ``remote="local"`` (the compiled plan sent
as data, the request serialised exactly as for NDIF and deserialised with interp hidden, then
run here) — interleaved, ``--repeat`` times, the median of each — and (c) engine ``hf`` for
reference.  Printed per workload: the times, the overhead ratio ``remote="local" / nnsight``, and
what the remote path sent: requests, traces (chunks of rows), rows, bytes sent, bytes returned.

Workloads:

* ``patching``: activation patching of ``resid_pre`` at every layer (30) × every token (10) of a
  10-token prompt pair (denoising, logit difference): 302 rows;
* ``trace``: a ROME causal-trace grid (kinds resid, mlp, attn; ``--samples`` noise draws) of the
  same prompt: ``1 + samples × (1 + 3 × 30 × 10)`` rows (timed once: it is long on a CPU);
* ``lens``: the logit lens of the prompt (30 layers × 10 tokens);
* ``atp_star``: AtP* (QK fix + GradDrop) of ``resid_pre`` at every layer × every token of the pair:
  the base run's 31 backward passes and the QK fix's pattern evaluations run where the model runs.

Run under the timing lock: ``flock /tmp/interp-timing.lock .venv/bin/python benchmarks/bench_remote.py``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

PROMPT = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
SUBJECT = "The Eiffel Tower"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2, help="noise draws of the causal-trace grid")
    ap.add_argument("--skip-trace", action="store_true")
    args = ap.parse_args()

    import torch

    import interp
    from interp.lens import logit_lens
    from interp.mediation.attribution import attribution_patching
    from interp.mediation.causal_trace import causal_trace
    from interp.mediation.patching import activation_patching
    from interp.remote import stats

    torch.manual_seed(0)
    hf = interp.load()
    local = interp.load(engine="nnsight")
    remote = interp.load(remote="local")
    n_tok = hf.tokenize(PROMPT).lengths[0]
    st = stats(remote)
    work = {
        "patching": lambda m: activation_patching(m, PROMPT, CORRUPT, sites=["resid_pre"], fast=False).grid("resid_pre"),
        "lens": lambda m: logit_lens(m, PROMPT, target=" Paris").top_probs,
        "atp_star": lambda m: attribution_patching(m, PROMPT, CORRUPT, sites=["resid_pre"], method="atp*").grid("resid_pre"),
    }
    if not args.skip_trace:
        def trace(m):
            res = causal_trace(m, PROMPT, SUBJECT, kinds=("resid", "mlp", "attn"), samples=args.samples, fast=False)
            return torch.stack([res.grid(k) for k in res.kinds])
        work["trace"] = trace
    report = {"model": remote.name, "prompt_tokens": n_tok, "layers": hf.n_layers, "workloads": {}}
    for name, fn in work.items():
        reps = 1 if name == "trace" else args.repeat
        times = {"hf": [], "nnsight": [], "remote_local": []}
        outs = {}
        for _ in range(reps):
            for key, m in (("nnsight", local), ("remote_local", remote), ("hf", hf)):
                if key == "remote_local":
                    st.reset()
                outs[key], t = timed(lambda m=m: fn(m))
                times[key].append(t)
                if key == "remote_local":
                    sent = st.as_dict()
        diff = max(float((outs[k] - outs["hf"]).abs().nan_to_num().max()) for k in ("nnsight", "remote_local"))
        assert diff <= 1e-4, (name, diff)
        med = {k: statistics.median(v) for k, v in times.items()}
        report["workloads"][name] = {
            "seconds_median": {k: round(v, 3) for k, v in med.items()}, "repeats": reps,
            "overhead_remote_local_vs_nnsight": round(med["remote_local"] / med["nnsight"], 3),
            "ratio_nnsight_vs_hf": round(med["nnsight"] / med["hf"], 3),
            "max_abs_diff_vs_hf": diff,
            "requests": sent["requests"], "traces": sent["traces"], "rows": sent["rows"],
            "bytes_sent": sent["bytes_sent"], "bytes_returned": sent["bytes_returned"],
            "request_seconds": round(sent["seconds"], 3),
        }
        print(json.dumps({name: report["workloads"][name]}), flush=True)  # kept if the run is cut short
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
