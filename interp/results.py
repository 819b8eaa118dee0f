"""Result objects: small dataclasses that save, load and draw themselves.

A result holds plain metadata (JSON: tokens, settings, scalar numbers, lists) and tensors
(safetensors, never pickle).  ``save(dir)`` writes ``<dir>/<stem>.json`` and, when it has
tensors, ``<dir>/<stem>.safetensors``; ``load(dir)`` reads them back into the same class.
Figures are drawn *from results*, never from the middle of a computation, so a user can restyle
a figure without rerunning a model.

Subclasses declare ``stem`` (the file name) and list their tensor fields in ``tensor_fields``;
every other dataclass field must be JSON-serialisable.  Tensors are also written into the JSON
as nested lists when ``json_tensors`` is true (the CLI's stable JSON for scripts).

The figures job keeps results with :func:`cached` (one helper for every section): a saved
result is reused only when it was made with the same settings, recorded next to it in
``<stem>.settings.json``; quick and full runs use separate directories (:func:`result_dir`).
Paper-scale dataset sweeps, which run for hours through their own resumable CLI, are kept with
:func:`cached_sweep`: reused when the settings the result records match, else resumed.

In Jupyter a result renders itself (``_ipython_display_``; ``_repr_html_`` elsewhere): a one-line
:meth:`Result.summary_line` (overridden where a better line is known) followed by its figure, so
ending a cell with ``causal_trace(...)`` shows the heatmap.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import torch

from .errors import ResultMissingError

R = TypeVar("R", bound="Result")


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and (x != x):
        return None
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


@dataclasses.dataclass
class Result:
    """Base of every result: JSON + safetensors ``save`` / ``load``, a summary line, Jupyter rendering."""
    stem: ClassVar[str] = "result"
    tensor_fields: ClassVar[tuple[str, ...]] = ()
    json_tensors: ClassVar[bool] = True

    def summary_line(self) -> str:
        """One line for a person: the class and its short scalar fields (model, prompt, p_clean …)."""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or v is None or f.name in self.tensor_fields:
                continue
            if isinstance(v, float):
                parts.append(f"{f.name}={v:.4g}")
            elif isinstance(v, int) or (isinstance(v, str) and 0 < len(v) <= 60):
                parts.append(f"{f.name}={v!r}" if isinstance(v, str) else f"{f.name}={v}")
            if len(parts) == 6:
                break
        return f"{type(self).__name__}({', '.join(parts)})"

    def _figure_or_reason(self):
        """``(figure, None)``, or ``(None, why)`` when the result has no figure or drawing it failed."""
        if not callable(getattr(self, "figure", None)):
            return None, None
        try:
            return self.figure(), None
        except Exception as e:  # noqa: BLE001 - a summary is still worth showing
            return None, f"{type(e).__name__}: {e}"

    def _summary_html(self, why: str | None) -> str:
        import html
        head = f"<p><code>{html.escape(self.summary_line())}</code></p>"
        return head + (f"<p><i>no figure: {html.escape(why)}</i></p>" if why else "")

    def _repr_html_(self) -> str:
        """HTML frontends other than IPython: the summary line, then the figure."""
        fig, why = self._figure_or_reason()
        if fig is None:
            return self._summary_html(why)
        body = fig._repr_html_() if hasattr(fig, "_repr_html_") else None
        return self._summary_html(None) + (body or fig.to_html(full_html=False, include_plotlyjs="cdn"))

    def _ipython_display_(self) -> None:
        """Jupyter: the summary line, then the figure through plotly's own display.

        plotly's display activates the notebook renderer once per kernel (plotly.js embedded once,
        see :mod:`interp.notebook`); going through ``_repr_html_`` would embed it with every result.
        """
        from IPython.display import HTML, display
        fig, why = self._figure_or_reason()
        display(HTML(self._summary_html(why)))
        if fig is not None:
            display(fig)

    def to_dict(self) -> dict:
        """The JSON form: every field (tensors as nested lists when ``json_tensors``), plus ``kind``."""
        out = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in self.tensor_fields and not self.json_tensors:
                continue
            out[f.name] = _jsonable(v)
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Write ``<dir>/<stem>.json`` (atomically) and ``<stem>.safetensors``; return the JSON path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.stem}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        tensors = {k: getattr(self, k).detach().cpu().contiguous() for k in self.tensor_fields
                   if isinstance(getattr(self, k), torch.Tensor)}
        if tensors:
            from safetensors.torch import save_file
            save_file(tensors, str(out / f"{self.stem}.safetensors"))
        return path

    @classmethod
    def load(cls: type[R], out_dir: str | Path, *, make_hint: str = "") -> R:
        """Read a result saved by :meth:`save`; a missing file raises :class:`~interp.errors.ResultMissingError` (with ``make_hint``)."""
        out = Path(out_dir)
        path = out / f"{cls.stem}.json"
        if not path.exists():
            hint = f" — make it with: {make_hint}" if make_hint else ""
            raise ResultMissingError(f"no {cls.__name__} at {path}{hint}")
        data = json.loads(path.read_text())
        data.pop("kind", None)
        st = out / f"{cls.stem}.safetensors"
        tensors = {}
        if st.exists():
            from safetensors.torch import load_file
            tensors = load_file(str(st))
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for k in cls.tensor_fields:
            if k in tensors:
                kwargs[k] = tensors[k]
            elif k in kwargs and kwargs[k] is not None:
                kwargs[k] = torch.tensor(kwargs[k])
        return cls(**kwargs)


# ---------------------------------------------------------------------- the figures job's cache
def result_dir(out_dir: str | Path, name: str, quick: bool) -> Path:
    """``<out>/results/<name>`` for a full run, ``<out>/results/<name>_quick`` for a quick one."""
    return Path(out_dir) / "results" / (f"{name}_quick" if quick else name)


def _settings_json(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))


def saved_settings(cls: type[Result], rdir: str | Path) -> dict | None:
    """The ``settings.json`` record of the ``cls`` result saved in ``rdir``, or None."""
    meta = Path(rdir) / f"{cls.stem}.settings.json"
    return json.loads(meta.read_text()) if meta.exists() else None


def cached(cls: type[R], rdir: str | Path, *, settings: dict, model, compute: Callable[[], R],
           command: str) -> R:
    """Load the ``cls`` result saved in ``rdir`` when it was made with ``settings``, else compute it.

    ``compute()`` runs only with a model (``model`` not None); it is timed, saved with
    ``result.save(rdir)``, and ``settings`` (+ model name, seconds) go to
    ``<stem>.settings.json``.  Without a model (``interp figures --redraw``) a missing result —
    or one made with other settings — raises :class:`~interp.errors.ResultMissingError` naming
    ``command``, the command that makes it.
    """
    rdir = Path(rdir)
    want = _settings_json(settings)
    old = saved_settings(cls, rdir)
    if (rdir / f"{cls.stem}.json").exists() and old is not None and old.get("settings") == want:
        return cls.load(rdir)
    if model is None:
        why = ("none is saved" if not (rdir / f"{cls.stem}.json").exists() else
               "the saved one was made with other settings" if old else "the saved one records no settings")
        raise ResultMissingError(f"no {cls.__name__} for these settings in {rdir} ({why}); make it with: "
                                 f"{command} (or run `interp figures` without --redraw)")
    t = time.perf_counter()
    res = compute()
    seconds = time.perf_counter() - t
    res.save(rdir)
    (rdir / f"{cls.stem}.settings.json").write_text(json.dumps(
        {"settings": want, "model": getattr(model, "name", ""), "seconds": round(seconds, 1)}, indent=1))
    return res


def cached_sweep(cls: type[R], rdir: str | Path, *, settings: dict, model, compute: Callable[[], R],
                 command: str, settings_of: Callable[[R], dict] = lambda r: r.settings) -> R:
    """A dataset sweep's result in ``rdir`` when the sweep was made with ``settings``, else ``compute()``.

    Paper-scale sweeps (every known fact of known_1000 at ROME's settings) run for hours through
    their own resumable CLI (``command``, e.g. ``interp trace --dataset ... --out rdir``), which
    saves the result next to its log — possibly over the first facts only (``--max-known``):
    the result records how many it covers, and the figure's caption says so.  Such a result is
    reused when every key of ``settings`` equals the one it records (``settings_of(result)``);
    ``compute()`` (with a model) resumes the log in ``rdir`` and sweeps every fact.  Without a
    model a missing or mismatched result raises :class:`~interp.errors.ResultMissingError`.
    """
    rdir = Path(rdir)
    want = _settings_json(settings)
    why = "none is saved"
    if (rdir / f"{cls.stem}.json").exists():
        res = cls.load(rdir)
        have = _settings_json(settings_of(res))
        diff = {k: have.get(k) for k, v in want.items() if have.get(k) != v}
        if not diff:
            return res
        why = f"the saved one was made with {diff}"
    if model is None:
        raise ResultMissingError(f"no {cls.__name__} for these settings in {rdir} ({why}); make it with: "
                                 f"{command} (or run `interp figures` without --redraw)")
    res = compute()
    res.save(rdir)
    return res
