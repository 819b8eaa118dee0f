"""Layer windows: one function, ROME's code formula for every k, used by tracing and knockout."""

from __future__ import annotations

import pytest

from conftest import tiny
from interp.attention import attention_knockout
from interp.errors import LayerIndexError
from interp.interventions import InterventionPlan
from interp.mediation import causal_trace
from interp.windows import WINDOW_CONVENTIONS, check_window, default_window, window_layers

PROMPT = "The Eiffel Tower is located in the city of"


def rome_window(layer: int, window: int, num_layers: int) -> list[int]:
    """ROME's ``experiments/causal_trace.py`` (``trace_important_window``), as written there."""
    return list(range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2))))


@pytest.mark.parametrize("L", [1, 2, 3, 12, 30, 48])
def test_every_window_follows_rome_formula(L):
    for k in range(1, L + 1):
        for c in range(L):
            assert window_layers(c, k, L) == rome_window(c, k, L), (L, k, c)
            assert window_layers(c, k, L, "rome_code") == rome_window(c, k, L)


def test_paper_convention_is_the_other_placement():
    assert window_layers(15, 10, 30) == list(range(10, 20))                   # code: [l-5, l+4]
    assert window_layers(15, 10, 30, "rome_paper") == list(range(11, 21))     # paper: [l-4, l+5]
    for k in range(1, 31, 2):  # odd windows are centred: both conventions agree
        assert all(window_layers(c, k, 30) == window_layers(c, k, 30, "rome_paper") for c in range(30))
    assert window_layers(0, 10, 30, "rome_paper") == list(range(0, 6))
    with pytest.raises(LayerIndexError, match="rome_code, rome_paper"):
        window_layers(3, 4, 30, "geva")
    assert set(WINDOW_CONVENTIONS) == {"rome_code", "rome_paper"}


def test_check_window():
    assert check_window(None, 30) == default_window(30) == 7
    assert check_window(None, 30, default=10) == 10
    assert check_window(40, 30, allow_larger=True) == 40
    for bad in (0, -1, 2.5, True, 31):
        with pytest.raises(LayerIndexError):
            check_window(bad, 30)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_trace_and_knockout_use_the_same_windows(k):
    m = tiny("llama")
    L = m.n_layers
    ko = attention_knockout(m, PROMPT, ["subject"], subject="The Eiffel Tower", window=k)
    tr = causal_trace(m, PROMPT, "Eiffel Tower", kinds=("mlp",), window=k, samples=1, positions=[-1])
    assert ko.windows == [rome_window(c, k, L) for c in range(L)]
    assert tr.windows["mlp"] == ko.windows
    assert tr.settings["window_convention"] == ko.window_convention == "rome_code"
    other = attention_knockout(m, PROMPT, ["subject"], subject="The Eiffel Tower", window=k,
                               window_convention="rome_paper")
    assert other.windows == [window_layers(c, k, L, "rome_paper") for c in range(L)]


@pytest.mark.slow
def test_default_model_k10_equals_one_window_at_a_time(default_model):
    """Geva et al.'s code on the default model: window 10 = ROME's formula, one forward per window."""
    m = default_model
    subject = "The Eiffel Tower"
    ko = attention_knockout(m, PROMPT, ["subject", "non_subject", "last"], subject=subject, window=10)
    L = m.n_layers
    assert ko.windows == [rome_window(c, 10, L) for c in range(L)]
    assert ko.windows[15] == list(range(10, 20))
    aid = ko.answer_id
    base = m.tokenize(PROMPT)
    t = base.lengths[0] - 1
    paper = attention_knockout(m, PROMPT, ["subject"], subject=subject, window=10,
                               window_convention="rome_paper")
    gap = 0.0
    names = list(ko.sources)
    for c in range(L):  # one forward per window: a row per source set, blocked in that window only
        plan = InterventionPlan(base.select([0] * len(names)))
        for r, name in enumerate(names):
            for l in rome_window(c, 10, L):
                plan.block(l, r, [t], ko.sources[name])
        p = m.run(plan=plan).logits.float().softmax(-1)[:, aid].tolist()
        for r, name in enumerate(names):
            # batched rows vs a few rows: float32 summation order only
            assert ko.p_knockout[name][c] == pytest.approx(p[r], abs=1e-5), (name, c)
        gap = max(gap, abs(paper.p_knockout["subject"][c] - p[names.index("subject")]))
    assert gap > 1e-2  # the one-layer shift of the other convention is visible on this prompt
