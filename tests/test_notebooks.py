"""Notebooks a researcher can trust: stored without outputs, executed top to bottom with their claims
checked, no warnings printed, and figures that draw in the exported HTML with the network off.

The fast tests run the rendering pipeline (``notebooks/render.py``) on a small notebook made here:
plotly figures and a result drawn offline with plotly.js embedded once, a ``tqdm.auto`` progress bar
with no ``TqdmWarning`` and exported as a static bar, a wrong claim failing.  The slow tests execute
every notebook in ``notebooks/`` (each one once per session) and open notebook 04 in headless Chromium.
"""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import render  # noqa: E402  (notebooks/render.py)
from browser import chromium, render_offline  # noqa: E402

NOTEBOOKS = render.NOTEBOOKS
#: printed by plotly.js's own bundle once, at its top
PLOTLYJS_BANNER = re.compile(r"plotly\.js v\d+\.\d+\.\d+")
needs_chromium = pytest.mark.skipif(chromium() is None, reason="no Chromium (make chromium installs it)")


def problems(nb) -> list[str]:
    """What a reader should not see: error outputs, and any stderr text (warnings, tracebacks)."""
    out = []
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
            elif o.get("output_type") == "stream" and o.get("name") == "stderr" and o.get("text", "").strip():
                out.append(f"cell {i} stderr: {o['text'].strip()[:300]}")
    return out


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped(path):
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_checks_its_claims_and_draws_offline(path):
    """Each notebook turns on offline figures and checks claims computed from its results."""
    nb = nbformat.read(str(path), as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "offline_figures()" in code, f"{path.name}: call interp.notebook.offline_figures() before a figure"
    assert re.search(r"(?<![\w.])check\(", code), \
        f"{path.name}: check the narrative's claims with interp.notebook.check"


def test_check_prints_claims_and_fails_on_a_wrong_one(capsys):
    from interp.notebook import check
    check({"two is even": 2 % 2 == 0})
    assert capsys.readouterr().out == "✓ two is even\n"
    with pytest.raises(AssertionError, match="three is even"):
        check({"two is even": True, "three is even": 3 % 2 == 0})
    assert "✗ three is even" in capsys.readouterr().out


SMALL = [
    "from interp.notebook import check, offline_figures\noffline_figures()",
    "import plotly.graph_objects as go\ngo.Figure(go.Heatmap(z=[[1, 2], [3, 4]]))",
    # a Result displays its summary and its figure through plotly's display (plotly.js not embedded again)
    "import dataclasses\nfrom interp.results import Result\n\n"
    "@dataclasses.dataclass\nclass Curve(Result):\n    y: list\n"
    "    def figure(self):\n        return go.Figure(go.Scatter(y=self.y))\n\nCurve([1, 3, 2])",
    "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='facts'):\n    pass",
    "check({'three is more than two': 3 > 2})",
]


def small_notebook(tmp_path, cells) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in cells]
    path = tmp_path / "small.ipynb"
    nbformat.write(nb, str(path))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = small_notebook(tmp_path_factory.mktemp("nb"), SMALL)
    nb = render.execute(path, timeout=120)
    html = render.to_html(nb)
    out = path.with_suffix(".html")
    out.write_text(html, encoding="utf-8")
    return nb, html, out


def test_small_notebook_runs_without_warnings_and_lists_its_claims(small):
    nb, html, _ = small
    assert problems(nb) == []          # no TqdmWarning: ipywidgets is installed (the notebook extra)
    assert render.claims(nb) == ["three is more than two"]


def test_exported_html_embeds_plotlyjs_once_and_the_progress_bar_statically(small):
    nb, html, _ = small
    assert len(PLOTLYJS_BANNER.findall(html)) == 1, "plotly.js must be embedded exactly once"
    assert render.WIDGET_VIEW not in html and "widget-state" not in html
    bar = re.search(r'<div class="static-progress"[^>]*><span>facts:.{1,3}100%</span> <progress ([^>]*)>', html)
    assert bar and 'value="3.0"' in bar[1] and 'max="3.0"' in bar[1], "the finished bar, drawn statically"


@needs_chromium
def test_exported_notebook_draws_its_figures_offline(small):
    r = render_offline(small[2], timeout=300)   # a 5 MB page (plotly.js inline) on a busy machine
    assert r.graphs == 2 and r.plots == 2 and r.drawn >= 2, r.summary()


def test_a_wrong_claim_stops_the_notebook(tmp_path):
    from nbclient.exceptions import CellExecutionError
    path = small_notebook(tmp_path, [SMALL[0], "check({'two is more than three': 2 > 3})", "print('not reached')"])
    with pytest.raises(CellExecutionError, match="two is more than three"):
        render.execute(path, timeout=120)


# ----------------------------------------------------------------------------- the real notebooks
_EXECUTED: dict[Path, object] = {}


def executed(path: Path):
    """The notebook executed once per test session (nbclient raises on a failing cell or claim)."""
    if path not in _EXECUTED:
        _EXECUTED[path] = render.execute(path)
    return _EXECUTED[path]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_checks_claims_and_prints_no_warning(path):
    nb = executed(path)   # raises on an error in any cell, a failed claim included
    assert problems(nb) == [], path.name
    assert len(render.claims(nb)) >= 2, f"{path.name} checks fewer than two claims: {render.claims(nb)}"


@pytest.mark.slow
@needs_chromium
def test_rendered_attention_notebook_draws_every_figure_offline(tmp_path):
    path = next(p for p in NOTEBOOKS if p.name.startswith("04_"))
    html = render.to_html(executed(path))
    assert len(PLOTLYJS_BANNER.findall(html)) == 1
    out = tmp_path / "04.html"
    out.write_text(html, encoding="utf-8")
    r = render_offline(out, budget_ms=20000, timeout=300)   # a 5 MB page on a busy machine
    assert r.graphs >= 5 and r.plots == r.graphs and r.drawn >= r.graphs, r.summary()
    # the corrected knockout table: percentages of p_clean (not fractions printed with a % sign)
    assert re.search(r"subject\s+strongest drop -[1-9]\d\.\d% of p_clean", html), "subject drop ≥ 10 % expected"
