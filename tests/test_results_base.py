"""Results: one base for the patching family, save/load, and the Jupyter rendering of every result."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import tiny
from interp.mediation import AttributionResult, PatchingResult, activation_patching, attribution_patching
from interp.mediation.patching import PairGridResult

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Kremlin Palace is located in the city of"


def test_patching_and_attribution_share_one_base(tmp_path):
    shared = {f.name for f in dataclasses.fields(PairGridResult)}
    for cls in (PatchingResult, AttributionResult):
        assert issubclass(cls, PairGridResult)
        own = {f.name for f in dataclasses.fields(cls)} - shared
        assert own and not own & shared
    m = tiny("llama")
    kw = dict(sites=("resid_pre", "head"), layers=[0, 2], positions=[-2, -1], answer=" Paris", wrong=" Moscow")
    pt = activation_patching(m, CLEAN, CORRUPT, **kw)   # (the random model's top-1 is the same for both)
    at = attribution_patching(m, CLEAN, CORRUPT, **kw)
    for r in (pt, at):
        assert r.grid("resid_pre").shape == (2, 2) and r.grid("head").shape == (2, 2, m.adapter.n_heads)
        r.save(tmp_path)
        back = type(r).load(tmp_path)
        assert back == r
        assert "clean" in r.summary_line() and r.answer in r.summary_line()
    assert pt.clean_metric == pytest.approx(at.clean_metric, abs=1e-4)


def test_results_render_in_jupyter():
    from interp.attention import attention_knockout
    m = tiny("llama")
    r = attention_knockout(m, CLEAN, ["subject", "last"], subject="The Eiffel Tower")
    html = r._repr_html_()
    assert html.startswith("<p><code>KnockoutResult(") and "p_clean=" in html
    assert "plotly" in html.lower() and "Attention knockout" in html
    # a result whose figure cannot be drawn still shows its summary, and why
    r.relative_change = {}
    r.sources = {"x": [0]}
    r.relative_change["x"] = None
    assert "no figure" in r._repr_html_()
