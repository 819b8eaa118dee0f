"""The figures job: ``interp figures`` runs the standard analyses and writes figures/ + REPORT.md.

Each method package exposes ``report_sections(model, out_dir, quick) -> list[dict]``: it computes
its standard analyses on the model — or reuses them: results are kept with
:func:`interp.results.cached` under ``<out>/results/<name>/`` (``<name>_quick`` in quick mode),
each with the settings that made it, so a rerun with the same settings only redraws — writes
each figure with :func:`interp.figures.save_figure`, and returns one entry per figure::

    {"stem": str, "title": str, "numbers": {name: value}, "caption": str,
     "command": str | None,        # the same analysis from the CLI, when one command makes it
     "results": [result dirs]}

Captions and numbers are computed from the results.  With ``model=None`` (``interp figures
--redraw``) a section redraws from saved results only, and a missing result raises
:class:`~interp.errors.ResultMissingError` naming the command that makes it.  This module
collects the sections, times each, and writes ``REPORT.md`` (from ``report.json``, so
``--only SECTION`` updates that section and keeps the others): per figure its numbers, caption,
the command that regenerates it and the result directories it was drawn from.  Every path
written there is relative (:func:`interp.datasets.display_path`).  Quick runs go to
:data:`QUICK_OUT` unless told otherwise, and never into a directory holding a full run's figures.
"""

from __future__ import annotations

import importlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

#: name -> module with ``report_sections``; order is the order of REPORT.md
SECTIONS = {
    "lens": "interp.report",
    "mediation": "interp.mediation.report",
    "attention": "interp.attention.report",
    "neurons": "interp.neurons.report",
    "concepts": "interp.concepts.report",
    "probes": "probes.report",
}

#: where ``interp figures --quick`` writes by default: quick figures never replace the full ones
#: in ``figures/`` (a quick run into a directory holding a full run's report is refused)
QUICK_OUT = "out/figures"

LENS_PROMPTS = {
    "eiffel": ("The Eiffel Tower is located in the city of", " Paris"),
    "japan": ("The capital of Japan is the city of", " Tokyo"),
}


def report_sections(model, out_dir: Path, quick: bool) -> list[dict]:
    """The logit-lens section (nostalgebraist 2020; the foundation's own figure)."""
    from .datasets import display_path
    from .figures import save_figure
    from .lens import LensResult, logit_lens
    from .results import cached, result_dir

    entries = []
    for key, (prompt, target) in LENS_PROMPTS.items():
        rdir = result_dir(out_dir, f"lens_{key}", quick)
        cmd = shlex.join(["interp", "lens", "--prompt", prompt, "--target", target, "--out", display_path(rdir)])
        res = cached(LensResult, rdir, settings={"prompt": prompt, "target": target}, model=model, command=cmd,
                     compute=lambda prompt=prompt, target=target: logit_lens(model, prompt, target=target))
        stem = f"logit_lens_{key}"
        save_figure(res.figure(), out_dir, stem)
        tp = res.target_probs[:, -1].tolist()
        first = next((l for l, t in zip(res.layers, (row[-1] for row in res.top_tokens)) if t == target), None)
        entries.append({
            "stem": stem, "title": f"Logit lens: {prompt!r}", "command": cmd, "results": [rdir],
            "numbers": {"final top token": res.top_tokens[-1][-1], "p(final top)": round(float(res.top_probs[-1, -1]), 4),
                        f"p({target!r}) at layer {res.layers[len(res.layers) // 2]}": round(tp[len(tp) // 2], 4),
                        f"first layer where {target!r} is top-1 at the last token": first},
            "caption": (f"Top-1 next-token prediction and its probability read from each of the {len(res.layers)} "
                        f"layers' residual stream at each of the {len(res.tokens)} positions, through the model's "
                        f"own final norm and unembedding."),
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


def _check_mode(out: Path, quick: bool) -> None:
    """A quick run never overwrites the figures of a full run (the committed ``figures/``)."""
    rep = out / "report.json"
    if quick and rep.exists() and json.loads(rep.read_text()).get("mode", "full") == "full":
        from .errors import SettingError
        raise SettingError(f"{out} holds the figures of a full run; --quick would overwrite them with quick ones: "
                           f"give another --out (the default for --quick is {QUICK_OUT})")


def _computed_seconds(result_dirs) -> float | None:
    """Seconds the section's results took to compute (from their settings records); None if unknown."""
    total = 0.0
    for d in result_dirs:
        for meta in sorted(Path(d).glob("*.settings.json")):
            sec = json.loads(meta.read_text()).get("seconds")
            if sec is None:
                return None
            total += sec
    return total


def run_figures(model=None, out_dir: str | Path = "figures", *, quick: bool = False,
                only: list[str] | None = None, redraw: bool = False, command: str = "") -> Path:
    """Run the sections (all, or ``only``), write their figures and ``REPORT.md`` into ``out_dir``.

    ``REPORT.md`` is rendered from ``report.json``: sections not run this time keep their last
    entries (when that report was made in the same mode, quick or full).  Returns its path.
    """
    from .datasets import display_path
    out = Path(out_dir)
    _check_mode(out, quick)
    out.mkdir(parents=True, exist_ok=True)
    _check_model_marker(out, model)
    names = list(SECTIONS) if not only else only
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        from .errors import SettingError
        raise SettingError(f"unknown section(s) {unknown}; choose from: {', '.join(SECTIONS)}")
    mode = "quick" if quick else "full"
    prev = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    if prev.get("mode", "full") != mode:
        prev = {}
    done = dict(prev.get("sections", {}))
    timings, computed = dict(prev.get("seconds", {})), dict(prev.get("computed_seconds", {}))
    problems = {}
    for name in names:
        try:
            mod = importlib.import_module(SECTIONS[name])
        except ImportError as e:
            problems[name] = f"not available: {e}"
            continue
        t = time.perf_counter()
        print(f"[figures] {name} …", file=sys.stderr, flush=True)
        entries = mod.report_sections(None if redraw else model, out, quick)
        timings[name] = time.perf_counter() - t
        computed[name] = _computed_seconds({d for e in entries for d in e.get("results", [])})
        for e in entries:
            e["results"] = [display_path(d) for d in e.get("results", [])]
        done[name] = json.loads(json.dumps(entries, default=str))
    done = {n: done[n] for n in SECTIONS if n in done}
    from .figures import static_export_available
    ok, why = static_export_available()
    lines = ["# interp figure report", ""]
    lines.append(f"Model: `{getattr(model, 'name', None) or prev.get('model') or 'saved results'}`"
                 + (f" (engine `{model.engine_name}`, {model.device}, {str(model.dtype).replace('torch.', '')})"
                    if model else ""))
    lines.append(f"Last generated by: `{command or 'interp figures'}` — Python {platform.python_version()}, "
                 f"{mode} mode{', redrawn from saved results' if redraw else ''}.")
    if not ok:
        lines.append(f"\n**Static export skipped:** {why}. Open the `.html` files.")
    lines.append("")
    lines.append("| section | figures | seconds (last run) | seconds computing its results |")
    lines.append("|---|---|---|---|")
    for name, entries in done.items():
        c = computed.get(name)
        lines.append(f"| {name} | {len(entries)} | {timings.get(name, float('nan')):.1f} | "
                     f"{'—' if c is None else f'{c:.1f}'} |")
    for name, why_ in problems.items():
        lines.append(f"| {name} | — | {why_} | |")
    lines.append("\nResults are reused while their settings are unchanged: a rerun only redraws. To recompute "
                 "one, delete its result directory and run its Regenerate command.")
    out_s = display_path(out)
    for name, entries in done.items():
        regen = f"interp figures --only {name} --out {shlex.quote(out_s)}" + (" --quick" if quick else "")
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
            where = ", ".join(f"`{d}/`" for d in e.get("results", []))
            lines.append(f"Regenerate: `{regen}`" + (f" — results in {where}" if where else "") + "\n")
            if e.get("command"):
                lines.append(f"Same analysis from the CLI: `{e['command']}`\n")
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps(
        {"mode": mode, "model": getattr(model, "name", None) or prev.get("model"), "sections": done,
         "seconds": timings, "computed_seconds": computed, "problems": problems}, indent=1, default=str))
    return path
