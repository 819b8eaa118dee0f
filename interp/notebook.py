"""Working in Jupyter: figures that draw offline, and claims a notebook checks as it runs.

**Figures.**  plotly's default renderer in a kernel is ``plotly_mimetype``: JupyterLab draws it
with its plotly extension, but the classic notebook and nbconvert's HTML export cannot, so an
exported notebook shows blank figures.  :func:`offline_figures` adds plotly's ``notebook``
renderer (``connected=False``): each figure also carries an HTML rendering, and plotly.js is
embedded once per kernel — when the renderer first activates — never fetched from a CDN.  Results
display their figure through plotly's own display (:meth:`interp.results.Result._ipython_display_`),
so they share that one copy.

**Claims.**  A notebook's narrative ("the subject matters in the upper-middle layers") is only
as good as the numbers behind it.  :func:`check` takes ``{claim: bool computed from results}``,
prints ``✓ claim`` for each, and raises :class:`AssertionError` naming every claim that does not
hold, so the test suite (which executes the notebooks) fails on a wrong claim and the rendered
notebook lists what was checked (``notebooks/render.py`` collects the ``✓`` lines).
"""

from __future__ import annotations

from typing import Mapping

#: plotly's own MIME bundle (JupyterLab, VS Code) plus an HTML rendering (classic notebook, nbconvert)
RENDERERS = "plotly_mimetype+notebook"


def offline_figures() -> None:
    """Draw plotly figures offline in Jupyter and in an exported notebook (plotly.js embedded once)."""
    import plotly.io as pio

    pio.renderers.default = RENDERERS


def check(claims: Mapping[str, bool]) -> None:
    """Print ``✓ claim`` for each claim that holds; raise ``AssertionError`` listing those that do not."""
    failed = [text for text, ok in claims.items() if not bool(ok)]
    for text, ok in claims.items():
        print(("✓ " if ok else "✗ ") + text)
    if failed:
        raise AssertionError("claim(s) not supported by the results: " + "; ".join(failed))
