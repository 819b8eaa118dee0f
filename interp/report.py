"""The figures job: ``interp figures`` runs the standard analyses and writes figures/ + REPORT.md.

Each method package exposes ``report_sections(model, out_dir, quick) -> list[dict]``: it computes
its standard analyses on the model (or loads them: results are cached under
``<out>/results/<name>/`` as JSON / safetensors, so a rerun only redraws), writes each figure with
:func:`interp.figures.save_figure`, and returns one entry per figure::

    {"stem": str, "title": str, "numbers": {name: value}, "command": str, "caption": str}

With ``model=None`` (``interp figures --redraw``) a section redraws from saved results only, and
a missing result raises :class:`~interp.errors.ResultMissingError` naming the command that makes
it.  This module collects the sections, times each, and writes ``REPORT.md``: one section per
figure with its key numbers and the command that regenerates it.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

from .errors import ResultMissingError

#: name -> module with ``report_sections``; order is the order of REPORT.md
SECTIONS = {
    "lens": "interp.report",
    "mediation": "interp.mediation.report",
    "attention": "interp.attention.report",
    "neurons": "interp.neurons.report",
    "probes": "probes.report",
}

LENS_PROMPTS = {
    "eiffel": ("The Eiffel Tower is located in the city of", " Paris"),
    "japan": ("The capital of Japan is the city of", " Tokyo"),
}


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """The logit-lens section (the foundation's own figure)."""
    from .figures import save_figure
    from .lens import LensResult, logit_lens

    entries = []
    for key, (prompt, target) in LENS_PROMPTS.items():
        rdir = out_dir / "results" / f"lens_{key}"
        cmd = f'interp lens --prompt "{prompt}" --target "{target}" --out {rdir}'
        if (rdir / "lens.json").exists():
            res = LensResult.load(rdir)
        elif model is None:
            raise ResultMissingError(f"no saved logit-lens result in {rdir}; make it with: {cmd} "
                                     f"(or run `interp figures` without --redraw)")
        else:
            res = logit_lens(model, prompt, target=target)
            res.save(rdir)
        stem = f"logit_lens_{key}"
        save_figure(res.figure(), out_dir, stem)
        tp = res.target_probs[:, -1].tolist()
        first = next((l for l, t in zip(res.layers, (row[-1] for row in res.top_tokens)) if t == target), None)
        entries.append({
            "stem": stem, "title": f"Logit lens: {prompt!r}",
            "numbers": {"final top token": res.top_tokens[-1][-1], "p(final top)": round(float(res.top_probs[-1, -1]), 4),
                        f"p({target!r}) at layer {res.layers[len(res.layers) // 2]}": round(tp[len(tp) // 2], 4),
                        f"first layer where {target!r} is top-1 at the last token": first},
            "command": cmd,
            "caption": "Top-1 next-token prediction and its probability read from each layer's residual "
                       "stream through the model's own final norm and unembedding.",
        })
    return entries


def _check_model_marker(out: Path, model) -> None:
    """Cached results belong to one model: refuse to mix another model's into them."""
    from .errors import InterpError
    marker = out / "results" / "MODEL"
    if model is None:
        return
    if marker.exists():
        old = marker.read_text().strip()
        if old != model.name:
            raise InterpError(f"{out} holds results computed for model {old!r}, not {model.name!r}; "
                              f"pass another --out for this model (or delete {out / 'results'})")
    else:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(model.name + "\n")


def run_figures(model=None, out_dir: str | Path = "figures", *, quick: bool = False,
                only: list[str] | None = None, redraw: bool = False, command: str = "") -> Path:
    """Run every section, write figures and ``REPORT.md`` into ``out_dir``; return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_model_marker(out, model)
    names = list(SECTIONS) if not only else only
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        from .errors import SettingError
        raise SettingError(f"unknown section(s) {unknown}; choose from: {', '.join(SECTIONS)}")
    done, timings, problems = {}, {}, {}
    for name in names:
        try:
            mod = importlib.import_module(SECTIONS[name])
        except ImportError as e:
            problems[name] = f"not available: {e}"
            continue
        t = time.perf_counter()
        print(f"[figures] {name} …", file=sys.stderr, flush=True)
        done[name] = mod.report_sections(None if redraw else model, out, quick)
        timings[name] = time.perf_counter() - t
    from .figures import static_export_available
    ok, why = static_export_available()
    lines = ["# interp figure report", ""]
    lines.append(f"Model: `{getattr(model, 'name', 'saved results')}`"
                 + (f" (engine `{model.engine_name}`, {model.device}, {str(model.dtype).replace('torch.', '')})" if model else ""))
    lines.append(f"Generated by: `{command or 'interp figures'}` — Python {platform.python_version()}, "
                 f"{'quick' if quick else 'full'} mode{', redrawn from saved results' if redraw else ''}.")
    if not ok:
        lines.append(f"\n**Static export skipped:** {why}. Open the `.html` files.")
    lines.append("")
    lines.append("| section | figures | seconds |")
    lines.append("|---|---|---|")
    for name, entries in done.items():
        lines.append(f"| {name} | {len(entries)} | {timings[name]:.1f} |")
    for name, why_ in problems.items():
        lines.append(f"| {name} | — | {why_} |")
    for name, entries in done.items():
        lines.append(f"\n## {name}\n")
        for e in entries:
            lines.append(f"### {e['title']}\n")
            png = out / f"{e['stem']}.png"
            if png.exists():
                lines.append(f"![{e['title']}]({e['stem']}.png)\n")
            lines.append(f"Files: [`{e['stem']}.html`]({e['stem']}.html)"
                         + (f", [`{e['stem']}.pdf`]({e['stem']}.pdf)" if (out / f"{e['stem']}.pdf").exists() else "")
                         + "\n")
            if e.get("caption"):
                lines.append(e["caption"] + "\n")
            if e.get("numbers"):
                lines.append("| quantity | value |\n|---|---|")
                for k, v in e["numbers"].items():
                    lines.append(f"| {k} | {v if not isinstance(v, float) else round(v, 4)} |")
                lines.append("")
            lines.append(f"Regenerate: `{e['command']}`\n")
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps({"sections": done, "seconds": timings, "problems": problems},
                                                indent=1, default=str))
    return path
