"""HTML figures render with the network off: one shared plotly.min.js, CDN-only files converted.

Each check opens the file in headless Chromium with the network cut (``tests/browser.py``) and
counts what plotly drew.  The CDN-only file is the control: it must stay blank offline, which
shows the network really is off.
"""

from __future__ import annotations

import shutil

import plotly.graph_objects as go
import pytest

from browser import chromium, render_offline
from interp.figures import PLOTLY_JS, make_offline, save_figure, style


@pytest.fixture(scope="module", autouse=True)
def need_chromium():
    if chromium() is None:
        pytest.fail("these tests need a Chromium (Debian: apt-get install chromium; the Makefile installs it)")


def _figures():
    line = style(go.Figure(go.Scatter(x=[0, 1, 2], y=[0.1, 0.5, 0.2], name="subject → last")), title="knockout")
    heat = style(go.Figure(go.Heatmap(z=[[0.0, 0.2], [0.4, 0.9]], colorscale="Viridis")), title="trace")
    return line, heat


def test_saved_figures_share_one_plotlyjs_and_render_offline(tmp_path):
    line, heat = _figures()
    a = save_figure(line, tmp_path, "line", formats=("html",))
    b = save_figure(heat, tmp_path, "heat", formats=("html",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.html", "line.html", PLOTLY_JS]
    assert (tmp_path / "line.html").stat().st_size < 50_000  # the figure, not plotly.js
    for path in (a["html"], b["html"]):
        r = render_offline(path)
        assert r.plots == 1 and r.drawn == 1, r.summary()


def test_redraw_writes_the_same_bytes(tmp_path):
    line, _ = _figures()
    save_figure(line, tmp_path, "line", formats=("html",))
    first = (tmp_path / "line.html").read_bytes()
    save_figure(line, tmp_path, "line", formats=("html",))
    assert (tmp_path / "line.html").read_bytes() == first


def test_embedded_figure_renders_alone(tmp_path):
    _, heat = _figures()
    save_figure(heat, tmp_path / "a", "heat", formats=("html",), plotlyjs="embed")
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(tmp_path / "a" / "heat.html", alone)
    assert not (alone / PLOTLY_JS).exists()
    r = render_offline(alone / "heat.html")
    assert r.plots == 1 and r.drawn == 1, r.summary()


def test_cdn_figure_is_blank_offline_until_converted(tmp_path):
    line, _ = _figures()
    old = tmp_path / "old.html"
    line.write_html(str(old), include_plotlyjs="cdn")  # what interp wrote before
    blank = render_offline(old)
    assert blank.plots == 0 and blank.drawn == 0, "the network is not off: " + blank.summary()
    assert make_offline(old) and (tmp_path / PLOTLY_JS).exists()
    assert not make_offline(old)  # already converted
    r = render_offline(old)
    assert r.plots == 1 and r.drawn == 1, r.summary()


def test_committed_figures_render_offline():
    from pathlib import Path
    figures = Path(__file__).resolve().parents[1] / "figures"
    html = sorted(figures.glob("*.html"))
    assert html and (figures / PLOTLY_JS).exists()
    for path in html:
        assert "cdn.plot.ly" not in path.read_text().split("</head>")[0].split(PLOTLY_JS)[0], path.name
    for path in (html[0], html[len(html) // 2], html[-1]):  # a sample: each render starts a Chromium
        r = render_offline(path)
        assert r.plots >= 1 and r.drawn >= 1, (path.name, r.summary())
