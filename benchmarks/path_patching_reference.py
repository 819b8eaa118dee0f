"""Path patching vs the one-path-at-a-time reference: the max |difference| per case (issue 14).

The reference is ``tests/test_path_patching.py::reference`` (Wang et al.'s two stages written with
plain Hugging Face hooks, one sender at a time).  Prints, for tiny Llama (GQA: 6 query heads, 2 KV
heads) and tiny GPT-2 on the hf / transformer_lens / nnsight engines, the largest difference over
5 senders × receivers {logits, ("resid", 2)} × MLPs recomputed / frozen, and for the default model
three sender → receiver pairs on an IOI prompt.  The tests assert each is ≤ 1e-5.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python benchmarks/path_patching_reference.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch
from conftest import tiny
from test_path_patching import CLEAN, CORRUPT, KW, SENDERS, reference
from interp.mediation.path_patching import path_patching

for arch in ("llama", "gpt2"):
    ref_model = tiny(arch, "hf", n_layers=3)
    refs = {(rec, fr): [reference(ref_model, CLEAN, CORRUPT, s, r, freeze_mlps=fr) for s in SENDERS]
            for rec, r in (("logits", 3), (("resid", 2), 2)) for fr in (False, True)}
    for engine in ("hf", "transformer_lens", "nnsight"):
        m = tiny(arch, engine, n_layers=3)
        d = max(float((torch.tensor(path_patching(m, CLEAN, CORRUPT, senders=SENDERS, receiver=rec, freeze_mlps=fr,
                                                   max_rows=4, **KW).values, dtype=torch.float64)
                       - torch.tensor(ref, dtype=torch.float64)).abs().max()) for (rec, fr), ref in refs.items())
        print(f"tiny {arch:5s} {engine:16s} max|diff| = {d:.2e}  ({len(SENDERS)} senders x 2 receivers x freeze on/off)")
import interp
m = interp.load()
clean = "When Mary and John went to the store, John gave a drink to"
corrupt = "When Alice and Bob went to the store, Bob gave a drink to"
kw = dict(answer=" Mary", wrong=" John")
for sender, receiver, r in [(("head", 20, 3), "logits", 30), (("mlp", 12), ("resid", 24), 24), (("head", 9, 6), ("resid", 16), 16)]:
    v = path_patching(m, clean, corrupt, senders=[sender], receiver=receiver, **kw).values[0]
    ref = reference(m, clean, corrupt, sender, r, **kw)
    print(f"default {sender} -> {receiver}: path {v:+.6f} ref {ref:+.6f} |diff| = {abs(v - ref):.2e}")
