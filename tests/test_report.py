"""The figures job: redraw from saved results only, clear errors, HTML without a Chromium."""

import subprocess
import sys

import plotly.graph_objects as go
import pytest

import interp.figures as figures
from interp.errors import ResultMissingError
from interp.report import run_figures


def test_redraw_without_results_names_the_command(tmp_path):
    with pytest.raises(ResultMissingError, match="make it with: interp lens --prompt"):
        run_figures(None, tmp_path, redraw=True, only=["lens"])


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ValueError, match="choose from: lens, mediation"):
        run_figures(None, tmp_path, redraw=True, only=["lense"])


def test_no_chromium_still_writes_html(tmp_path, monkeypatch):
    monkeypatch.delenv("INTERP_FIGURE_FORMATS")           # the default formats, PNG and PDF included
    monkeypatch.setattr(figures, "find_chromium", lambda: None)
    paths = figures.save_figure(figures.style(go.Figure(go.Scatter(y=[1, 2]))), tmp_path, "fig")
    assert (tmp_path / "fig.html").exists() and paths["png"] is None and paths["pdf"] is None
    assert "no Chromium found" in paths["skipped"] and "apt-get install chromium" in paths["skipped"]


def test_static_export_writes_png_and_pdf(tmp_path, monkeypatch):
    """The suite writes HTML only (conftest); here the default formats export PNG and PDF for real
    (``make test`` installs a Chromium; without one the HTML is written and the reason given)."""
    monkeypatch.delenv("INTERP_FIGURE_FORMATS")
    paths = figures.save_figure(figures.style(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]))), tmp_path, "fig")
    assert (tmp_path / "fig.html").is_file()
    ok, why = figures.static_export_available()
    if not ok:
        assert paths["png"] is None and paths["skipped"] == why
        return
    assert paths["skipped"] is None, paths["skipped"]
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"


def test_figures_cli_unknown_model_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "interp", "figures", "--model", "no-such", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "neither a local directory" in r.stderr and "Traceback" not in r.stderr


def test_results_of_another_model_are_not_reused(tmp_path):
    from types import SimpleNamespace

    from interp.errors import InterpError
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "MODEL").write_text("some-other-model\n")
    with pytest.raises(InterpError, match="computed for model 'some-other-model'"):
        run_figures(SimpleNamespace(name="smollm2-135m-instruct"), tmp_path, only=["lens"])


def test_quick_runs_never_overwrite_a_full_run(tmp_path, monkeypatch, capsys):
    """``interp figures --quick`` wrote into figures/ by default, over the committed full-run figures."""
    from interp.cli import main
    from interp.errors import SettingError
    from interp.report import QUICK_OUT
    full = tmp_path / "figures"
    full.mkdir()
    (full / "report.json").write_text('{"mode": "full", "sections": {}}')
    with pytest.raises(SettingError, match="holds the figures of a full run; --quick would overwrite them"):
        run_figures(None, full, quick=True, redraw=True, only=["lens"])
    assert sorted(p.name for p in full.iterdir()) == ["report.json"]  # nothing written
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "--quick", "--redraw", "--only", "lens", "--out", "figures"]) == 2
    assert "holds the figures of a full run" in capsys.readouterr().err
    # without --out a quick run goes to its own directory (here: nothing saved there yet to redraw)
    assert main(["figures", "--quick", "--redraw", "--only", "lens"]) == 2
    err = capsys.readouterr().err
    assert f"in {QUICK_OUT}/results/lens_eiffel_quick" in err and "full run" not in err


# ----------------------------------------------------------------------------- the result cache
def test_redraw_of_mediation_without_results_names_the_command(tmp_path):
    """It raised AttributeError (a missing result was computed with model=None)."""
    with pytest.raises(ResultMissingError, match="make it with: interp trace --prompt"):
        run_figures(None, tmp_path, redraw=True, only=["mediation"])


def test_cached_results_are_keyed_by_settings_and_mode(tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from interp.results import Result, cached, result_dir

    @dataclasses.dataclass
    class Count(Result):
        stem = "count"
        n: int

    calls = []

    def make(n):
        calls.append(n)
        return Count(n)

    model = SimpleNamespace(name="m")
    full, quick = result_dir(tmp_path, "x", False), result_dir(tmp_path, "x", True)
    assert full != quick and quick.name == "x_quick"
    assert cached(Count, full, settings={"n": 5}, model=model, compute=lambda: make(5), command="c").n == 5
    assert cached(Count, full, settings={"n": 5}, model=model, compute=lambda: make(5), command="c").n == 5
    assert calls == [5]                                   # same settings: reused
    assert cached(Count, quick, settings={"n": 1}, model=model, compute=lambda: make(1), command="c").n == 1
    assert cached(Count, full, settings={"n": 5}, model=None, compute=None, command="c").n == 5  # quick kept apart
    with pytest.raises(ResultMissingError, match=r"made with other settings\); make it with: interp x"):
        cached(Count, full, settings={"n": 6}, model=None, compute=None, command="interp x")
    assert cached(Count, full, settings={"n": 6}, model=model, compute=lambda: make(6), command="c").n == 6
    assert calls == [5, 1, 6]
    meta = (full / "count.settings.json").read_text()
    assert '"n": 6' in meta and '"seconds"' in meta


def test_paper_sweeps_are_reused_when_their_recorded_settings_match(tmp_path):
    """A sweep made by its own CLI (maybe over the first facts only) is drawn as is; other settings resume."""
    import dataclasses
    from types import SimpleNamespace

    from interp.results import Result, cached_sweep

    @dataclasses.dataclass
    class Sweep(Result):
        stem = "sweep"
        n_traced: int
        settings: dict

    calls = []

    def make(n):
        calls.append(n)
        return Sweep(n, {"samples": 10, "window": 10, "seed": 0})

    Sweep(7, {"samples": 10, "window": 10, "seed": 0, "limit": None}).save(tmp_path)   # the CLI's partial run
    model = SimpleNamespace(name="m")
    assert cached_sweep(Sweep, tmp_path, settings={"samples": 10, "window": 10}, model=None, compute=None,
                        command="c").n_traced == 7
    with pytest.raises(ResultMissingError, match=r"made with \{'samples': 10\}\); make it with: interp trace"):
        cached_sweep(Sweep, tmp_path, settings={"samples": 2, "window": 10}, model=None, compute=None,
                     command="interp trace")
    assert cached_sweep(Sweep, tmp_path, settings={"samples": 10, "window": 10}, model=model,
                        compute=lambda: make(9), command="c").n_traced == 7 and calls == []
    assert cached_sweep(Sweep, tmp_path, settings={"samples": 10, "window": 5}, model=model,
                        compute=lambda: make(9), command="c").n_traced == 9 and calls == [9]
    assert Sweep.load(tmp_path).n_traced == 9                                          # saved


def test_rome_comparison_reports_peaks_with_se_and_depth():
    from types import SimpleNamespace

    from interp.mediation.report import rome_comparison
    nan = None
    sw = SimpleNamespace(mean_p_clean=0.4, mean_p_corrupt=0.1, layers=list(range(4)), kinds=["resid", "mlp"],
                         aie={"resid": {"last_subject": [0.1, 0.3, 0.2, nan]}, "mlp": {"last_subject": [0.05] * 4}},
                         se={"resid": {"last_subject": [0.01, 0.02, 0.01, nan]}, "mlp": {"last_subject": [0.01] * 4}},
                         n_facts={"last_subject": 12})
    out = rome_comparison(sw)
    assert out["p_clean (ROME GPT-2 XL 27.0%)"] == "40.0%"
    key = "resid AIE at the last subject token, peak (ROME GPT-2 XL 8.7%, layer 15/48 = 0.31 of depth)"
    assert out[key] == "30.0% ± 2.0 at layer 1/4 = 0.25 of depth, n=12 facts"


def test_committed_report_is_relative_and_runnable():
    """figures/REPORT.md: no machine paths, no placeholders; every command parses and names a real subcommand."""
    import re
    import shlex
    from pathlib import Path

    from interp.cli import build_parser
    from interp.report import SECTIONS
    root = Path(__file__).resolve().parents[1]
    text = (root / "figures" / "REPORT.md").read_text()
    # no absolute path of any machine (whatever its prefix); URLs do not match
    abs_paths = re.findall(r"(?:^|[\s`'\"(\[=:])(/[\w.-]+/[\w./-]*)", text, re.M)
    assert not abs_paths, abs_paths
    parser = build_parser()
    regen = re.findall(r"^Regenerate: `([^`]*)`", text, re.M)
    same = re.findall(r"^Same analysis from the CLI: `([^`]*)`", text, re.M)
    assert len(regen) >= 20
    for cmd in regen + same:
        assert "..." not in cmd and "DIR" not in cmd, cmd
        argv = shlex.split(cmd)
        assert not any(a.startswith("/") for a in argv), cmd
        if argv[0] == ".venv/bin/python":      # a result made by a benchmark script (AtP* validation, name movers)
            assert argv[1].startswith("benchmarks/") and (root / argv[1]).is_file(), cmd
            continue
        assert argv[0] == "interp", cmd
        args = parser.parse_args(argv[1:])           # a real subcommand with valid flags
        if args.command == "figures":
            assert args.only in SECTIONS and args.out == "figures"


def test_readme_gallery_caption_matches_the_committed_trace():
    """The gallery says where the early MLP peak is; the committed trace must agree."""
    import re
    from pathlib import Path

    from interp.mediation import CausalTraceResult
    root = Path(__file__).resolve().parents[1]
    caption = next(l for l in (root / "README.md").read_text().splitlines() if "ROME causal trace of the same fact" in l)
    token = re.search(r"peaks early inside the subject \(at '([^']+)'\)", caption)[1]
    tr = CausalTraceResult.load(root / "figures" / "results" / "mediation_trace")
    g = tr.grid("mlp", effect=True)
    l, t = divmod(int(g.nan_to_num(-1e9).argmax()), g.shape[1])
    assert tr.tokens[t].strip() == token and tr.subject_range[0] <= t < tr.subject_range[1]
    assert l < len(tr.layers) // 2                                    # early
    r = tr.grid("resid", effect=True)
    assert int(r.nan_to_num(-1e9).argmax()) % r.shape[1] == len(tr.tokens) - 1  # residual peak: last token


def test_committed_knockout_figures_keep_position_0_off_the_subject():
    """Issue 16: the Eiffel prompt starts with its subject; the figures run it after a sink token and
    keep the run without one (flagged) for comparison."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from conftest import default_tokenizer
    from interp.attention.report import sink_token
    assert sink_token(default_tokenizer()) == "<|endoftext|>"  # special in SmolLM2, whose BOS is a chat token
    assert sink_token(SimpleNamespace(all_special_tokens=["<s>"], bos_token="<s>")) is True
    res = Path(__file__).resolve().parents[1] / "figures" / "results"
    ko, nb = (json.loads((res / d / "knockout.json").read_text()) for d in ("knockout_eiffel", "knockout_eiffel_no_bos"))
    assert ko["tokens"][0] == ko["bos"] == "<|endoftext|>" and ko["position_zero"] == []
    assert nb["bos"] == "" and nb["position_zero"] == ["subject"] and nb["tokens"] == ko["tokens"][1:]
    sw = json.loads((res / "knockout_sweep" / "knockout_sweep.json").read_text())
    assert sw["bos"] == "<|endoftext|>" and sw["n_position_zero"] == 0


def test_method_validations_are_reported_from_their_committed_results(tmp_path, capsys):
    """AtP* validation and name-mover path patching (issue 14) enter REPORT.md from the results their
    benchmark scripts committed; without them the section names the commands instead."""
    from pathlib import Path

    from interp.mediation.report import ATP_STAR_COMMAND, IOI_COMMAND, method_entries
    assert method_entries(tmp_path) == []
    out = capsys.readouterr().out
    assert ATP_STAR_COMMAND in out and IOI_COMMAND in out
    import shutil
    figures = Path(__file__).resolve().parents[1] / "figures"
    for name in ("atp_star_validation", "path_patching_ioi"):   # a copy: redrawing writes figures
        shutil.copytree(figures / "results" / name, tmp_path / "results" / name)
    shutil.copy(figures / "path_patching_ioi.png", tmp_path)
    stems = {e["stem"]: e for e in method_entries(tmp_path)}
    assert set(stems) == {"atp_star_validation", "path_patching_ioi"}
    atp = stems["atp_star_validation"]["numbers"]
    assert atp["prompt pairs"] >= 20 and any("misses" in k for k in atp)
    assert stems["path_patching_ioi"]["numbers"]["senders significant after maxT (p_adj < 0.05)"] >= 1


def test_trace_sweep_significance_entry_reads_the_log(tmp_path):
    """The known_1000 trace sweep with per-cell CIs and maxT p-values (issue 14), from its log alone."""
    import shutil
    from pathlib import Path

    from interp.mediation.report import _significance_entry
    src = Path(__file__).resolve().parents[1] / "figures" / "results" / "trace_sweep"
    shutil.copytree(src, tmp_path / "trace_sweep")
    e = _significance_entry(tmp_path / "trace_sweep", tmp_path)
    assert e["numbers"]["facts"] >= 40 and (tmp_path / "mediation_trace_sweep_significant.html").is_file()
    mlp = e["numbers"]["mlp: peak at the last subject token, AIE [95% CI], p_adj"]
    lo, hi = (float(x) for x in mlp.split("[")[1].split("]")[0].split(", "))
    assert 0 < lo < hi   # the early MLP site is significant over the committed facts
