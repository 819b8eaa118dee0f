"""One figure style for the whole toolkit, and saving to HTML + PNG + PDF.

Every figure goes through :func:`style` (one font, sizes, margins, colour scales) and
:func:`save_figure`.  HTML is always written.  PNG and PDF need kaleido, which drives a
Chromium: Debian's ``chromium`` package works (the Makefile installs it when it can).  Without
one, :func:`save_figure` still writes the HTML and returns a clear message saying why the static
files were skipped, instead of failing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FONT = "Arial, Helvetica, sans-serif"
FONT_SIZE = 14
WIDTH, HEIGHT = 900, 520
#: sequential scale for probabilities / effects ≥ 0; diverging for signed values
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]

_STATIC_WARNED = False
_SERVER_STARTED = False


def _start_kaleido_server() -> None:
    """Keep one Chromium for the whole process (kaleido ≥ 1.1): a fresh one per image costs seconds."""
    global _SERVER_STARTED
    if _SERVER_STARTED:
        return
    _SERVER_STARTED = True
    try:
        import atexit

        import kaleido
        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(lambda: kaleido.stop_sync_server(silence_warnings=True))
    except Exception:  # older kaleido: plotly starts a browser per image, slower but correct
        pass


def style(fig, *, title: str | None = None, width: int = WIDTH, height: int = HEIGHT):
    """Apply the house style in place and return the figure."""
    fig.update_layout(
        template="simple_white", font=dict(family=FONT, size=FONT_SIZE),
        title=dict(text=title, x=0.02, xanchor="left") if title else None,
        width=width, height=height, margin=dict(l=90, r=40, t=70 if title else 30, b=80),
        colorway=COLORS, legend=dict(font=dict(size=FONT_SIZE - 2)),
    )
    fig.update_xaxes(title_font=dict(size=FONT_SIZE), tickfont=dict(size=FONT_SIZE - 2), automargin=True)
    fig.update_yaxes(title_font=dict(size=FONT_SIZE), tickfont=dict(size=FONT_SIZE - 2), automargin=True)
    return fig


def find_chromium() -> str | None:
    for var in ("BROWSER_PATH", "CHROME_PATH"):
        if os.environ.get(var) and Path(os.environ[var]).exists():
            return os.environ[var]
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def static_export_available() -> tuple[bool, str]:
    """Whether PNG/PDF export can work here, and why not."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False, "kaleido is not installed (pip install kaleido)"
    chrome = find_chromium()
    if chrome is None:
        return False, ("no Chromium found for kaleido: install one (Debian: apt-get install "
                       "chromium) or set BROWSER_PATH; HTML was written")
    os.environ.setdefault("BROWSER_PATH", chrome)
    return True, ""


def save_figure(fig, out_dir: str | Path, stem: str, *, formats=("html", "png", "pdf")) -> dict:
    """Write ``stem.html`` (always) and ``stem.png`` / ``stem.pdf`` (when a Chromium is there).

    Returns ``{"html": path, "png": path|None, "pdf": path|None, "skipped": reason|None}``.
    """
    global _STATIC_WARNED
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict = {"html": None, "png": None, "pdf": None, "skipped": None}
    if "html" in formats:
        p = out / f"{stem}.html"
        fig.write_html(str(p), include_plotlyjs="cdn")
        paths["html"] = str(p)
    static = [f for f in formats if f in ("png", "pdf", "svg")]
    if static:
        ok, why = static_export_available()
        if not ok:
            paths["skipped"] = why
            if not _STATIC_WARNED:
                import warnings
                warnings.warn(f"PNG/PDF export skipped: {why}", stacklevel=2)
                _STATIC_WARNED = True
            return paths
        _start_kaleido_server()
        for f in static:
            p = out / f"{stem}.{f}"
            try:
                import warnings
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="The kopts argument is ignored")
                    fig.write_image(str(p), scale=2 if f == "png" else 1)
                paths[f] = str(p)
            except Exception as e:  # kaleido/Chromium failures must not lose the HTML
                paths["skipped"] = f"{f} export failed: {type(e).__name__}: {str(e)[:200]}"
    return paths
