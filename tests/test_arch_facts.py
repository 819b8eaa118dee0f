"""Per-architecture facts methods ask the adapter for (they used to test the family themselves)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_value_vector_mask_selects_one_value_vector(arch):
    a = tiny(arch).adapter
    mask = a.value_vector_mask(1, 7)
    w = a.down[1].weight
    assert mask.shape == w.shape and int(mask.sum()) == a.d_model
    # the masked entries are exactly W_out(1)[7]: the neuron's value vector in the stored weight
    with torch.no_grad():
        before = w.detach().clone()
        w.add_(mask)
        changed = a.W_out(1) - (before if arch == "gpt2" else before.T)
        w.copy_(before)
    assert torch.allclose(changed[7], torch.ones(a.d_model), atol=1e-6)      # float rounding of w + 1 - w
    assert torch.count_nonzero(changed.abs() > 0.5) == a.d_model


@pytest.mark.parametrize("arch,centres", [("llama", False), ("gpt2", True)])
def test_final_norm_linear_reproduces_the_norm(arch, centres):
    a = tiny(arch).adapter
    assert a.final_norm_centres is centres
    x = torch.randn(a.d_model)
    fn, bias = a.final_norm_linear(x)
    assert torch.allclose(fn(x) + bias, a.final_norm(x).float(), atol=1e-5)
    # linear in its argument (the scale is frozen at x)
    y = torch.randn(a.d_model)
    assert torch.allclose(fn(x + 2 * y), fn(x) + 2 * fn(y), atol=1e-5)
