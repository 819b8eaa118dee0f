"""bf16 weights: every method family runs, returns float32 probabilities and metrics, and agrees
with the float32 model within bf16's precision (the GPU path's numbers, checked on the CPU).

The tolerances are bf16's: 8 mantissa bits through 30 layers move a probability by a few
hundredths; a method that computed its softmax or metric in bf16 (or mixed dtypes in an edit)
fails them by far, or fails with a dtype error.
"""

import warnings

import pytest
import torch

import interp
from interp.attention.knockout import attention_knockout
from interp.mediation.causal_trace import causal_trace
from interp.mediation.patching import activation_patching
from interp.neurons.decode import decode_neurons

PROMPT = "The Eiffel Tower is located in the city of"
CORRUPT = "The Kremlin Palace is located in the city of"


@pytest.fixture(scope="module")
def bf16_model():
    return interp.load(dtype="bfloat16")


def test_bf16_model_loads_in_bf16_and_reports_it(bf16_model):
    assert bf16_model.adapter.W_U.dtype == torch.bfloat16


def test_bf16_methods_agree_with_fp32(default_model, bf16_model):
    warnings.simplefilter("ignore")
    a, b = (interp.logit_lens(m, PROMPT, target=" Paris") for m in (default_model, bf16_model))
    assert b.target_probs.dtype == torch.float32
    assert (a.target_probs - b.target_probs).abs().max() < 0.06
    assert a.target_probs[-1, -1] > 0.3 and (a.target_probs[-1, -1] - b.target_probs[-1, -1]).abs() < 0.03

    a, b = (causal_trace(m, PROMPT, "Eiffel Tower", samples=1, kinds=("resid",), seed=0,
                         positions=[3, -1])
            for m in (default_model, bf16_model))
    ga, gb = a.grid("resid", effect=True), b.grid("resid", effect=True)   # traced: ' Tower' and the last token
    assert gb.dtype == torch.float32 and abs(a.p_clean - b.p_clean) < 0.03
    ok = ga.isfinite()
    assert ok.sum() == 60 and torch.equal(ok, gb.isfinite())
    assert torch.corrcoef(torch.stack([ga[ok], gb[ok]]))[0, 1] > 0.97
    assert (ga[ok] - gb[ok]).abs().max() < 0.06

    a, b = (activation_patching(m, PROMPT, CORRUPT, sites=("resid_pre",), layers=range(0, 30, 3)) for m in (default_model, bf16_model))
    ra, rb = a.normalized("resid_pre"), b.normalized("resid_pre")
    assert rb.dtype == torch.float32 and (ra - rb).abs().max() < 0.06

    a, b = (attention_knockout(m, PROMPT, subject="Eiffel Tower", window=9, layers=[8, 14, 20]) for m in (default_model, bf16_model))
    for s in a.relative_change:   # a ratio of two probabilities, each a few % off in bf16
        assert max(abs(x - y) for x, y in zip(a.relative_change[s], b.relative_change[s])) < 0.1

    a, b = (decode_neurons(m, layers=[5, 20], directions=["out"], k=5, bottom=False)
            for m in (default_model, bf16_model))
    assert b.top_scores.dtype == torch.float32
    ia, ib = a.top_ids.flatten(0, 2), b.top_ids.flatten(0, 2)           # [neuron, k]
    overlap = (ia[:, :, None] == ib[:, None, :]).any(-1).float().mean()
    assert overlap > 0.8                                                 # top tokens mostly the same
