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
    monkeypatch.setattr(figures, "find_chromium", lambda: None)
    paths = figures.save_figure(figures.style(go.Figure(go.Scatter(y=[1, 2]))), tmp_path, "fig")
    assert (tmp_path / "fig.html").exists() and paths["png"] is None and paths["pdf"] is None
    assert "no Chromium found" in paths["skipped"] and "apt-get install chromium" in paths["skipped"]


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
