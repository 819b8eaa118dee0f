"""Print the largest differences between the plain HF forward and each engine.

For the default model and tiny random-weight Llama (GQA) and GPT-2 configs: last-token logits
vs a plain ``hf_model(input_ids)`` forward of each prompt alone, and every site of a padded
batch vs the ``hf`` engine.  The test suite asserts ≤ 1e-4; this prints the measured values.

    .venv/bin/python benchmarks/engine_parity.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import tiny, tiny_hf  # noqa: E402

import interp  # noqa: E402

PROMPTS = ["The Eiffel Tower is located in the city of", "Rome is the capital of", "Hi"]
READS = ["embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post", "attn_z",
         "head_out", "attn_pattern"]
ENGINES = ("hf", "transformer_lens", "nnsight")


def report(name, make, plain_model):
    torch.set_grad_enabled(False)
    outs = {e: make(e).run(PROMPTS, reads=READS, positions=[-1, 0]) for e in ENGINES}
    base = outs["hf"]
    for e in ENGINES:
        d_logit = 0.0
        for i in range(len(PROMPTS)):
            ids = torch.tensor([base.batch.token_ids(i)])
            plain = plain_model(input_ids=ids).logits[0, -1]
            d_logit = max(d_logit, float((outs[e].logits[i] - plain).abs().max()))
        d_site = max(float((outs[e].cache[k] - base.cache[k]).abs().max()) for k in base.cache.keys())
        print(f"{name:10s} {e:17s} logits vs plain HF: {d_logit:.2e}   every site vs hf engine: {d_site:.2e}")


if __name__ == "__main__":
    report("default", lambda e: interp.load(engine=e), interp.load().hf)
    for arch in ("llama", "gpt2"):
        report(f"tiny-{arch}", lambda e, arch=arch: tiny(arch, e), tiny_hf(arch))
