"""One figure style for the whole toolkit, and saving to HTML + PNG + PDF.

Every figure goes through :func:`style` (one font, sizes, margins, colour scales) and
:func:`save_figure`.  HTML is always written.  PNG and PDF need kaleido, which drives a
Chromium: Debian's ``chromium`` package works (the Makefile installs it when it can).  Without
one, :func:`save_figure` still writes the HTML and returns a clear message saying why the static
files were skipped, instead of failing.

HTML figures work offline.  plotly.js (4.8 MB) is written once per directory as
``plotly.min.js`` (:func:`write_plotlyjs`) and every figure loads it by a relative path, so a
folder of 40 figures carries one copy, not 40.  A figure copied somewhere without that file
falls back to plotly's CDN (online); ``save_figure(..., plotlyjs="embed")`` writes a
self-contained file for sharing one figure offline.  :func:`make_offline` converts HTML figures
written by older versions (which loaded plotly.js from the CDN only).
"""

from __future__ import annotations

import os
import re
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
    """A Chromium for kaleido: ``$BROWSER_PATH`` / ``$CHROME_PATH`` or one on the PATH, else None."""
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


# ---------------------------------------------------------------------- offline HTML
PLOTLY_JS = "plotly.min.js"
_CDN_TAG = re.compile(r'<script[^>]*\ssrc="https://cdn\.plot\.ly/[^"]*"[^>]*>\s*</script>')
_JS_CHECKED: set[str] = set()


def _plotlyjs() -> bytes:
    from plotly.offline import get_plotlyjs
    return get_plotlyjs().encode("utf-8")


def _loader() -> str:
    """``<script>`` tags: the shared local copy, else (a figure copied alone, online) plotly's CDN."""
    from plotly.io._utils import plotly_cdn_url
    return (f'<script charset="utf-8" src="{PLOTLY_JS}"></script>\n'
            f'<script>window.Plotly || document.write(\'<script charset="utf-8" src="{plotly_cdn_url()}"><\\/script>\')'
            f'</script>')


def write_plotlyjs(out_dir: str | Path) -> Path:
    """Write ``plotly.min.js`` (the installed plotly's) into ``out_dir`` unless it is already there."""
    path = Path(out_dir) / PLOTLY_JS
    if str(path.resolve()) in _JS_CHECKED and path.exists():
        return path
    js = _plotlyjs()
    if not path.exists() or path.stat().st_size != len(js) or path.read_bytes() != js:
        from .sweep import write_atomic
        write_atomic(path, js)
    _JS_CHECKED.add(str(path.resolve()))
    return path


def figure_html(fig, plotlyjs: str = "shared", div_id: str | None = None) -> str:
    """A whole HTML page of ``fig``: ``"shared"`` loads ``plotly.min.js`` beside it, ``"embed"`` inlines it.

    ``div_id`` fixes the plot's element id (plotly draws a random one), so a redraw of the same
    figure writes the same bytes.
    """
    if plotlyjs not in ("shared", "embed"):
        from .errors import SettingError
        raise SettingError(f"plotlyjs must be 'shared' (one plotly.min.js beside the figures) or 'embed' "
                           f"(self-contained file), not {plotlyjs!r}")
    head = _loader() if plotlyjs == "shared" else f'<script charset="utf-8">{_plotlyjs().decode()}</script>'
    body = fig.to_html(include_plotlyjs=False, full_html=False, div_id=div_id)
    return (f'<!doctype html>\n<html>\n<head>\n<meta charset="utf-8" />\n{head}\n'
            f'<style>html, body {{height: 100%;}}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n')


def make_offline(html_path: str | Path) -> bool:
    """Make an HTML figure that loads plotly.js from the CDN load the shared local copy first.

    Returns True when the file was changed (``plotly.min.js`` is written beside it).
    """
    p = Path(html_path)
    text = p.read_text(encoding="utf-8")
    if not _CDN_TAG.search(text):
        return False
    text = _CDN_TAG.sub("", text, count=1).replace("<head>", "<head>\n" + _loader(), 1)
    from .sweep import write_atomic
    write_atomic(p, text)
    write_plotlyjs(p.parent)
    return True


def save_figure(fig, out_dir: str | Path, stem: str, *, formats=None, plotlyjs: str = "shared") -> dict:
    """Write ``stem.html`` and ``stem.png`` / ``stem.pdf`` (the static files when a Chromium is there).

    ``formats`` defaults to ``$INTERP_FIGURE_FORMATS`` (comma list, e.g. ``html`` to skip the
    Chromium start of PNG/PDF export) or ``html,png,pdf``.  The HTML works offline:
    ``plotlyjs="shared"`` writes ``plotly.min.js`` once beside the figures (see the module
    docstring), ``"embed"`` makes a self-contained file.
    Returns ``{"html": path, "png": path|None, "pdf": path|None, "skipped": reason|None}``.
    """
    global _STATIC_WARNED
    if formats is None:
        formats = tuple(f.strip() for f in os.environ.get("INTERP_FIGURE_FORMATS", "html,png,pdf").split(","))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict = {"html": None, "png": None, "pdf": None, "skipped": None}
    if "html" in formats:
        p = out / f"{stem}.html"
        html = figure_html(fig, plotlyjs, div_id=stem)
        if plotlyjs == "shared":
            write_plotlyjs(out)
        p.write_text(html, encoding="utf-8")
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
