"""Execute the notebooks and write what a reader sees: ``make notebooks`` → ``out/notebooks/``.

Each notebook runs top to bottom in a fresh kernel (nbclient) from its own directory, as Jupyter
runs it; a failing cell — an error, or a claim cell whose ``assert`` does not hold — stops it with
the cell and its traceback.  The executed notebook (``NAME.ipynb``) and its HTML rendering
(``NAME.html``, nbconvert's lab template) are written to the output directory, with the
seconds each took.

The HTML works offline.  The notebooks call :func:`interp.notebook.offline_figures`, so each
figure carries an HTML rendering and plotly.js is embedded once per notebook (not fetched from a
CDN).  Progress bars are ipywidgets in Jupyter (``tqdm.auto``); their widget state would need
the widget manager from a CDN, so :func:`static_widgets` replaces each bar by its final text and a
static ``<progress>`` element before export.

    python notebooks/render.py                      # every notebook → out/notebooks/
    python notebooks/render.py 04 --out /tmp/nb     # the notebooks whose names start with 04
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
#: the prefix a claim cell prints before each claim it checked (see interp.notebook.check)
CLAIM_MARK = "✓ "


def execute(path: str | Path, *, timeout: int = 900):
    """Run a notebook top to bottom in a fresh ``python3`` kernel; return the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def _progress_html(state: dict, model_id: str) -> str | None:
    """A tqdm bar (HBox of HTML, FloatProgress, HTML) from its saved widget state, as static HTML."""
    box = state.get(model_id, {})
    if box.get("model_name") != "HBoxModel":
        return None
    parts = [state.get(c.removeprefix("IPY_MODEL_"), {}) for c in box["state"].get("children", [])]
    out = []
    for p in parts:
        s = p.get("state", {})
        if p.get("model_name") == "HTMLModel":
            out.append(f"<span>{s.get('value', '')}</span>")   # tqdm's own text, already escaped
        elif p.get("model_name") == "FloatProgressModel":
            out.append(f"<progress value='{float(s.get('value', 0))}' max='{float(s.get('max', 1))}'></progress>")
        else:
            return None
    return f"<div class='static-progress' style='font-family: monospace'>{' '.join(out)}</div>"


def static_widgets(nb):
    """Replace each progress-bar widget output by static HTML from its final state; drop widget state.

    Without widget state nbconvert adds no widget-manager or require.js ``<script>`` from a CDN.
    A widget that is not a progress bar keeps its plain-text form.
    """
    import copy

    nb = copy.deepcopy(nb)
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            static = _progress_html(state, data[WIDGET_VIEW]["model_id"])
            text = data.get("text/plain", "")
            out["data"] = {"text/html": static} if static else {"text/plain": text}
    return nb


def to_html(nb) -> str:
    """The HTML a reader sees (nbconvert's lab template), progress bars made static."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(static_widgets(nb))
    return body


def stream_text(nb, name: str | None = None) -> list[tuple[int, str, str]]:
    """``(cell index, stream name, text)`` of every stream output (``name``: only stdout / stderr)."""
    return [(i, o.get("name"), o.get("text", "")) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "stream" and name in (None, o.get("name"))]


def claims(nb) -> list[str]:
    """The claims the executed notebook checked: every printed line that starts with ``✓ ``."""
    return [line[len(CLAIM_MARK):] for _, _, text in stream_text(nb, "stdout")
            for line in text.splitlines() if line.startswith(CLAIM_MARK)]


def render(path: str | Path, out_dir: str | Path) -> dict:
    """Execute ``path`` and write ``<out>/<name>.ipynb`` + ``<name>.html``; return timings and claims."""
    import nbformat

    path, out = Path(path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    nb = execute(path)
    t1 = time.perf_counter()
    nbformat.write(nb, str(out / path.name))
    (out / f"{path.stem}.html").write_text(to_html(nb), encoding="utf-8")
    return {"notebook": path.name, "execute_s": round(t1 - t0, 1),
            "export_s": round(time.perf_counter() - t1, 1), "claims": claims(nb)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    ap.add_argument("--out", default=str(HERE.parent / "out" / "notebooks"))
    args = ap.parse_args(argv)
    chosen = [p for p in NOTEBOOKS if not args.names or any(p.name.startswith(n) for n in args.names)]
    if not chosen:
        print(f"no notebook matches {args.names}; there are {[p.name for p in NOTEBOOKS]}", file=sys.stderr)
        return 2
    report = []
    for path in chosen:
        r = render(path, args.out)
        report.append(r)
        print(f"{r['notebook']}: executed in {r['execute_s']} s, HTML in {r['export_s']} s, "
              f"{len(r['claims'])} claim(s) checked → {Path(args.out) / (path.stem + '.html')}", flush=True)
    (Path(args.out) / "render.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
