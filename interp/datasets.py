"""Fact sets that several methods sweep over, read from any path the user gives.

* :func:`load_known_facts` — ROME's known_1000 format (``prompt, subject, attribute`` per row;
  a JSON list or JSON lines).  Also accepts LRE relation files (``prompt_templates`` +
  ``samples``) and Fakepedia JSONL (``query, subject, true_object``), mapped to the same
  :class:`Fact`.
* Rows missing a field are *reported* (``LoadReport.skipped`` with the row number and the
  missing field) and the rest are loaded: a sweep goes on with the good rows.

Data is never bundled with interp.  :func:`data_dir` is the one place that says where it is:
``$INTERP_DATA`` when set, else ``../shared/data`` beside the checkout; the figures job, tests,
benchmarks and notebooks all ask it.  What is written into results and commands goes through
:func:`dataset_label` / :func:`display_path`, so no absolute machine path ends up in a result
file or a report.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError


def data_dir() -> Path:
    """The evaluation-data directory: ``$INTERP_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("INTERP_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def display_path(path: str | Path) -> str:
    """``path`` as a command should show it: relative to the working directory (POSIX separators)."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return Path(os.path.relpath(p, Path.cwd())).as_posix()
    except ValueError:  # another drive (Windows): no relative form exists
        return p.name


def dataset_label(path: str | Path) -> str:
    """How a result names a dataset: relative to :func:`data_dir` when inside it, else :func:`display_path`."""
    p = Path(path)
    try:
        return p.resolve().relative_to(data_dir().resolve()).as_posix()
    except ValueError:
        return display_path(p)


@dataclass(frozen=True)
class Fact:
    """One factual prompt: the model should continue ``prompt`` with ``attribute``."""

    prompt: str
    subject: str
    attribute: str
    row: int = -1
    relation: str = ""
    context: str | None = None


@dataclass
class LoadReport:
    """How a dataset file loaded: its rows and the rows skipped with the reason."""
    path: str
    n_rows: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: rows, skipped rows and the first reasons."""
        s = f"{self.path}: {self.n_rows} rows, {len(self.skipped)} skipped"
        if self.skipped:
            s += " (" + "; ".join(f"row {r}: {why}" for r, why in self.skipped[:5]) + (" …" if len(self.skipped) > 5 else "") + ")"
        return s


def read_records(path: str | Path) -> list[dict]:
    """Rows of a JSON list, JSON-lines file (optionally gzipped)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset file {p} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        text = f.read()
    text_s = text.lstrip()
    if not text_s:
        raise DatasetError(f"dataset file {p} is empty")
    try:
        if text_s[0] == "[":
            data = json.loads(text_s)
            if not isinstance(data, list):
                raise DatasetError(f"{p}: expected a JSON list of records")
            return data
        if text_s[0] == "{":
            try:
                return [json.loads(line) for line in text_s.splitlines() if line.strip()]
            except json.JSONDecodeError:
                return [json.loads(text_s)]
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
                           f"fix or replace the file (truncated by an interrupted download?)") from None
    raise DatasetError(f"{p}: not JSON or JSON lines (formats: known_1000 JSON list, LRE relation "
                       f"JSON, Fakepedia / NQ-Swap / ConflictQA JSON lines)")


def load_known_facts(path: str | Path, *, limit: int | None = None) -> tuple[list[Fact], LoadReport]:
    """Facts from a known_1000-style file (also LRE relation files and Fakepedia JSONL)."""
    p = Path(path)
    records = read_records(p)
    report = LoadReport(str(p), n_rows=0)
    facts: list[Fact] = []
    # LRE relation file: one record with templates and samples
    if len(records) == 1 and "samples" in records[0] and "prompt_templates" in records[0]:
        rel = records[0]
        tmpl = rel["prompt_templates"][0]
        for i, s in enumerate(rel["samples"]):
            report.n_rows += 1
            if not s.get("subject") or not s.get("object"):
                report.skipped.append((i, "missing subject/object"))
                continue
            facts.append(Fact(tmpl.format(s["subject"]), s["subject"], s["object"], i, rel.get("name", "")))
    else:
        for i, r in enumerate(records):
            report.n_rows += 1
            if not isinstance(r, dict):
                report.skipped.append((i, "not a JSON object"))
                continue
            prompt = r.get("prompt", r.get("query"))
            attr = r.get("attribute", r.get("true_object"))
            missing = [k for k, v in (("prompt", prompt), ("subject", r.get("subject")), ("attribute", attr)) if not v]
            if missing:
                report.skipped.append((i, f"missing field(s): {', '.join(missing)}"))
                continue
            if r["subject"] not in prompt:
                report.skipped.append((i, f"subject {r['subject']!r} not in prompt"))
                continue
            facts.append(Fact(prompt, r["subject"], attr, i, str(r.get("relation_id", r.get("rel_p_id", "")))))
    if limit is not None:
        facts = facts[:limit]
    if not facts:
        raise DatasetError(f"{p}: no usable fact rows ({report.summary()})")
    return facts, report
