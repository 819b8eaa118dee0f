"""probes.report: the comparison with Zhao et al. is computed from the results, and the paper figure
draws both datasets with their intervals and the chance line (synthetic results, no model)."""

from __future__ import annotations

from probes.report import _source_counts, zhao_comparison
from probes.result import ProbeResult, conflict_figure, peak_shape


def _result(peaks: dict[str, tuple[int, float]], L: int = 30, half: float = 0.03, n: int = 400, **counts) -> ProbeResult:
    comps = {}
    for comp, (layer, top) in peaks.items():
        acc = [0.5 + (top - 0.5) * max(0.0, 1 - abs(l - layer) / 10) for l in range(L)]
        comps[comp] = {"accuracy": acc, "accuracy_ci": [[a - half, a + half] for a in acc],
                       "auroc": [min(1.0, a + 0.05) for a in acc], "auroc_ci": [[a, a + 0.1] for a in acc]}
    return ProbeResult(task="conflict", layers=list(range(L)), components=comps, baselines={"majority": 0.5},
                       split_sizes=[], class_counts={"n_rows": n, "n_examples": n // 2, **counts}, best={},
                       n_seeds=10, model="tiny", settings={"n_seeds": 10, "n_demos": 4, "known": "first_token"})


def test_peak_shape_and_claims_follow_the_numbers():
    facts = _result({"resid": (15, 0.80), "mlp": (14, 0.78), "attn": (22, 0.70)})
    sh = peak_shape(facts)
    assert sh["resid"]["layer"] == 15 and sh["resid"]["middle_third"] and not sh["attn"]["middle_third"]
    assert abs(sh["resid"]["depth"] - 15 / 29) < 1e-9
    assert sh["resid"]["layers_above_chance"] == sum(1 for lo, _ in facts.components["resid"]["accuracy_ci"] if lo > 0.5)
    nq = _result({"resid": (1, 0.54), "mlp": (1, 0.53), "attn": (2, 0.52)}, half=0.08,
                 behaviour={"known_closed_book": 12, "n": 121})
    c = zhao_comparison(facts, nq)
    assert c["claims"] == {"near_90": False, "peak_middle_third": True, "above_chance": True, "resid_ge_attn": True,
                           "mlp_ge_attn": True, "nq_above_chance": False}
    assert "80.0% [77.0%, 83.0%]" in c["text"] and "below their ~90%" in c["text"] and "12 of 121" in c["text"]
    # the other way round: attention best, late, near 90%
    flipped = zhao_comparison(_result({"resid": (27, 0.60), "mlp": (27, 0.58), "attn": (26, 0.88)}))
    assert flipped["claims"] == {"near_90": True, "peak_middle_third": False, "above_chance": True,
                                 "resid_ge_attn": False, "mlp_ge_attn": False}
    assert "below attention, unlike the paper" in flipped["text"] and "outside the middle third" in flipped["text"]


def test_conflict_figure_has_both_datasets_bands_and_chance():
    a = _result({"resid": (15, 0.8), "mlp": (14, 0.78), "attn": (22, 0.7)})
    b = _result({"resid": (1, 0.55), "mlp": (1, 0.53), "attn": (2, 0.52)})
    fig = conflict_figure({"known facts": a, "NQ-Swap": b})
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(lines) == len(bands) == 2 * 2 * 3  # datasets × metrics × components
    assert sum(t.showlegend for t in lines) == 3
    hlines = [s for s in fig.layout.shapes if s.type == "line" and s.y0 == s.y1 == 0.5]
    assert len(hlines) == 4  # a chance line in every panel
    assert [ann.text.split(" (")[0] for ann in fig.layout.annotations[:2]] == ["known facts", "NQ-Swap"]


def test_source_counts_pool_a_directory():
    r = _result({"resid": (1, 0.6)}, known_scan={"counts": {
        "known_1000/known_1000.json": {"scanned": 100, "known": 20, "kept": 20},
        "lre/factual/a.json": {"scanned": 10, "known": 5, "kept": 4},
        "lre/factual/b.json": {"scanned": 30, "known": 3, "kept": 3}}})
    assert _source_counts(r) == {"known_1000/known_1000.json": "20 / 20 / 100", "lre/factual/ (2 files)": "7 / 8 / 40"}


def test_zhao_entry_reports_every_layer_x_component_with_intervals(tmp_path, monkeypatch):
    from probes.report import _zhao_entry

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")
    facts = _result({"resid": (15, 0.80), "mlp": (14, 0.78), "attn": (22, 0.70)}, n=400)
    for d in facts.components.values():
        d["control_accuracy"] = [0.5] * 30
    nq = _result({"resid": (1, 0.54), "mlp": (1, 0.53), "attn": (2, 0.52)}, half=0.08, n=242,
                 behaviour={"known_closed_book": 12, "n": 121})
    e = _zhao_entry(tmp_path, facts, nq, [tmp_path / "a", tmp_path / "b"])
    assert (tmp_path / "probe_conflict_zhao.html").exists()
    n = e["numbers"]
    rows = [k for k in n if k.startswith("known facts, layer ")]
    assert len(rows) == 30
    a = facts.components["attn"]["accuracy"][7]
    assert f"attn {a:.3f} [{a - 0.03:.3f}, {a + 0.03:.3f}]" in n["known facts, layer 7"]
    assert n["known facts: resid peak (layer, acc [95% CI], control)"] == "15, 0.800 [0.770, 0.830], 0.500"
    assert n["NQ-Swap: attn peak (layer, acc [95% CI], control)"] == "2, 0.520 [0.440, 0.600]"
    assert n["claim: peak_middle_third"] is True and n["claim: nq_above_chance"] is False
    assert zhao_comparison(facts, nq)["text"] in e["caption"]
