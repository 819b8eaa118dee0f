"""Knowledge-conflict examples, read from any path (or the hub by name when online).

Every loader returns the same :class:`ConflictExample` — one question with an *original*
context that states the true object and a *substituted* context that states another object —
plus a :class:`interp.datasets.LoadReport` that lists, with row numbers, the rows it skipped
(a missing field, an empty answer list …).  The good rows are always loaded: a sweep goes on.

Formats (the ``--dataset`` prefix of ``interp probe``):

* ``nqswap`` — NQ-Swap (Longpre et al. 2021; the split of Zhao et al. 2024): JSON lines
  (optionally gzipped) with ``question, org_context, org_answer[], sub_context, sub_answer[]``.
  A name without a file on disk (e.g. ``pminervini/NQ-Swap``) is fetched with
  ``datasets.load_dataset`` — which needs the network, and fails offline with a
  :class:`~interp.errors.DatasetError` that says to pass a local file.
* ``conflictqa`` — ConflictQA (Xie et al. 2023): ``question, memory_answer, parametric_memory,
  counter_answer, counter_memory``.  The parametric-memory paragraph plays the original
  context (its answer is the memory answer), the counter-memory paragraph the substituted one.
* ``facts`` — any fact set :func:`interp.datasets.load_known_facts` reads (ROME's known_1000,
  an LRE relation file, Fakepedia), or several pooled: ``facts:A,B,DIR`` (a directory stands
  for every ``.json`` / ``.jsonl`` file in it, sorted; ``limit`` then applies to each file).
  The original context states the fact (``"<prompt> <object>."``); the substituted one states
  the object of *another fact of the same relation in the same file* (so the substitute has the
  right type: a city for a city), chosen with a fixed seed — or, for Fakepedia, the row's own
  ``counterfactual_object``.  The question is the cloze prompt itself.  A fact repeated in a
  file (Fakepedia lists one fact with several counterfactuals) is kept once and the repeats are
  reported as skipped.

``group`` is what must never be split across train and test (:mod:`probes.splits`): the
question for QA sets (NQ-Swap has ~3 substitutions per question), the subject for fact sets
(pooled files share subjects — "France" in several relations — and they share the group).
``origin`` names the file an example came from (relative to the data directory), so pooled
sets can be counted per source; ``relation`` is its relation within that file.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from interp.datasets import LoadReport, dataset_label, load_known_facts, read_records
from interp.errors import DatasetError

FORMATS = ("nqswap", "conflictqa", "facts")
_FORMAT_HELP = ("nqswap:PATH (NQ-Swap JSON lines, .gz ok, or a HF dataset name when online), "
                "conflictqa:PATH (ConflictQA JSON lines), facts:PATH[,PATH…] (known_1000 JSON, LRE "
                "relation JSON, Fakepedia JSON lines, or a directory of them; several are pooled)")


@dataclass(frozen=True)
class ConflictExample:
    """One question with an original context (true object) and a substituted context."""

    id: str
    group: str
    question: str
    org_context: str
    org_answers: tuple[str, ...]
    sub_context: str
    sub_answers: tuple[str, ...]
    row: int = -1
    source: str = ""
    origin: str = ""
    relation: str = ""


@dataclass
class ConflictSet:
    """Conflict examples of one format, with the load report (rows skipped and why)."""
    examples: list[ConflictExample]
    report: LoadReport
    format: str
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)


def _answers(v) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)):
        return ()
    return tuple(str(a).strip() for a in v if str(a).strip())


def _rows_from_records(records, fmt: str, path: str, limit: int | None) -> ConflictSet:
    spec = {"nqswap": ("question", "org_context", "org_answer", "sub_context", "sub_answer"),
            "conflictqa": ("question", "parametric_memory", "memory_answer", "counter_memory", "counter_answer")}[fmt]
    report = LoadReport(path)
    out: list[ConflictExample] = []
    for i, r in enumerate(records):
        report.n_rows += 1
        if not isinstance(r, dict):
            report.skipped.append((i, "not a JSON object"))
            continue
        q, oc, oa, sc, sa = (r.get(k) for k in spec)
        oa, sa = _answers(oa), _answers(sa)
        missing = [k for k, v in zip(spec, (q, oc, oa, sc, sa)) if not v]
        if missing:
            report.skipped.append((i, f"missing field(s): {', '.join(missing)}"))
            continue
        out.append(ConflictExample(f"{fmt}-{i}", str(q).strip().lower(), str(q).strip(), str(oc), oa,
                                   str(sc), sa, i, fmt, dataset_label(path)))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DatasetError(f"{path}: no usable {fmt} rows (need fields {', '.join(spec)}; "
                           f"{report.summary()})")
    return ConflictSet(out, report, fmt)


def load_nqswap(path_or_name: str | Path, *, limit: int | None = None, split: str = "dev") -> ConflictSet:
    """NQ-Swap from a JSON-lines file (``.gz`` ok) or, online, a Hugging Face dataset name.

    Returns a :class:`ConflictSet`; rows missing a field are listed in ``report.skipped``.
    """
    p = Path(path_or_name)
    if p.exists():
        return _rows_from_records(read_records(p), "nqswap", str(p), limit)
    name = str(path_or_name)
    if "/" not in name or name.startswith((".", "/")) or p.suffix in (".gz", ".jsonl", ".json"):
        raise DatasetError(f"NQ-Swap file {p} does not exist: pass an existing JSON-lines file "
                           f"(e.g. ../shared/data/nq_swap/nqswap_merged.jsonl.gz) or, online, a hub "
                           f"dataset name such as pminervini/NQ-Swap")
    try:
        import datasets
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, no such split
        raise DatasetError(f"could not load the Hugging Face dataset {name!r} (split {split!r}): "
                           f"{type(e).__name__}: {str(e)[:200]}. Offline? Pass a local NQ-Swap "
                           f"JSON-lines file instead (nqswap:PATH)") from None
    return _rows_from_records(list(ds), "nqswap", name, limit)


def load_conflictqa(path: str | Path, *, limit: int | None = None) -> ConflictSet:
    """ConflictQA JSON lines (Xie et al. 2023): parametric memory vs counter-memory contexts."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"ConflictQA file {p} does not exist: pass an existing JSON-lines file "
                           f"(e.g. ../shared/data/conflictqa/conflictQA-strategyQA-llama2-7b.jsonl)")
    return _rows_from_records(read_records(p), "conflictqa", str(p), limit)


def fact_files(paths) -> list[Path]:
    """The fact files of ``paths`` (a path, a comma-separated string, or a list): directories expand
    to their ``.json`` / ``.jsonl`` files, sorted."""
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p.strip()]
    out: list[Path] = []
    for raw in paths:
        p = Path(str(raw).strip())
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and q.name.endswith((".json", ".jsonl", ".jsonl.gz")))
            if not files:
                raise DatasetError(f"fact directory {p} holds no .json / .jsonl files")
            out.extend(files)
        elif p.exists():
            out.append(p)
        else:
            raise DatasetError(f"fact file {p} does not exist: pass a known_1000 JSON, an LRE relation "
                               f"JSON, a Fakepedia JSON-lines file, a directory of them, or several "
                               f"separated by commas")
    if not out:
        raise DatasetError("no fact file given: facts:PATH[,PATH…]")
    return out


def _counterfactuals(path: Path) -> dict[int, str]:
    """Fakepedia's own substitute per row (``counterfactual_object``); empty for other formats."""
    recs = read_records(path)
    return {i: str(r["counterfactual_object"]).strip() for i, r in enumerate(recs)
            if isinstance(r, dict) and str(r.get("counterfactual_object") or "").strip()}


def build_fact_conflicts(path, *, limit: int | None = None, seed: int = 0) -> ConflictSet:
    """Conflicts from one fact file or several pooled (``path``: see :func:`fact_files`).

    For each fact ``(prompt, subject, object, relation)``, the substitute is Fakepedia's own
    ``counterfactual_object`` when the row has one, else the object of another fact of the same
    relation in the same file (a different string), drawn with ``seed``.  Facts whose relation has a
    single distinct object, and repeats of a ``(prompt, object)`` already seen in the file, are
    reported as skipped.  ``limit`` caps the facts taken from each file.
    """
    files = fact_files(path)
    rng = random.Random(seed)
    out: list[ConflictExample] = []
    report = LoadReport(",".join(str(f) for f in files))
    for p in files:
        facts, rep = load_known_facts(p)
        label = dataset_label(p)
        prefix = f"{label}: " if len(files) > 1 else ""
        report.n_rows += rep.n_rows
        report.skipped.extend((r, prefix + why) for r, why in rep.skipped)
        cf = _counterfactuals(p)
        by_rel: dict[str, list[str]] = {}
        for f in facts:
            by_rel.setdefault(f.relation, [])
            if f.attribute not in by_rel[f.relation]:
                by_rel[f.relation].append(f.attribute)
        seen: dict[tuple[str, str], int] = {}
        n_file = 0
        for f in facts:
            if limit is not None and n_file >= limit:
                break
            q = f.prompt.strip()
            key = (q, f.attribute.strip())
            if key in seen:
                report.skipped.append((f.row, f"{prefix}repeats the fact of row {seen[key]}"))
                continue
            seen[key] = f.row
            sub = cf.get(f.row)
            if sub is None or sub.lower() == f.attribute.strip().lower():
                pool = [o for o in by_rel[f.relation] if o.strip().lower() != f.attribute.strip().lower()]
                if not pool:
                    report.skipped.append((f.row, f"{prefix}relation {f.relation!r} has no other object to "
                                                  f"substitute"))
                    continue
                sub = rng.choice(pool)
            eid = f"facts-{f.row}" if len(files) == 1 else f"{label}#{f.row}"
            out.append(ConflictExample(eid, f.subject.strip().lower(), q, f"{q} {f.attribute}.", (f.attribute,),
                                       f"{q} {sub}.", (sub,), f.row, "facts", label, f.relation))
            n_file += 1
    if not out:
        raise DatasetError(f"{path}: no usable fact rows to build conflicts from ({report.summary()})")
    if len(files) == 1:
        report.skipped.sort()
    return ConflictSet(out, report, "facts")


def load_conflicts(spec: str, *, limit: int | None = None) -> ConflictSet:
    """Dispatch ``"FORMAT:PATH"`` (``nqswap``, ``conflictqa``, ``facts``) to its loader."""
    fmt, sep, path = str(spec).partition(":")
    if not sep or fmt not in FORMATS:
        raise DatasetError(f"unknown dataset {spec!r}: give FORMAT:PATH with FORMAT one of "
                           f"{', '.join(FORMATS)} — {_FORMAT_HELP}")
    if not path:
        raise DatasetError(f"dataset {spec!r} has no path after '{fmt}:' — {_FORMAT_HELP}")
    if fmt == "nqswap":
        return load_nqswap(path, limit=limit)
    if fmt == "conflictqa":
        return load_conflictqa(path, limit=limit)
    return build_fact_conflicts(path, limit=limit)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Small helper for tests / users: rows to JSON lines (gzip when the name ends in .gz)."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return p
