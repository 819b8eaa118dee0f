"""The result log of every sweep: append-only, crash-safe, resumable.

A sweep over a dataset (causal traces of 1,000 facts, knockouts, neuron statistics, probe fits)
writes each finished item to ``<dir>/items.jsonl`` as one JSON line ``{"id": ..., "result": ...}``,
next to ``<dir>/config.json`` (the settings that produced it).  The contract:

* **Append only.**  A line is written, flushed and ``fsync``-ed before :meth:`Checkpoint.add`
  returns; the file is never rewritten or truncated.  A kill (SIGKILL, power loss after the
  fsync) loses at most the item being written.
* **A torn line is ignored, never what follows it.**  A kill in the middle of a write leaves a
  fragment without a newline at the end of the file.  Reopening terminates it with a newline
  (an append, not a rewrite), so the next record starts on its own line; reading skips any line
  that is not a complete record and keeps every line after it.  The skipped item is simply
  computed again.
* **Resume or refuse.**  Reopening a directory with the same settings resumes (``item in log`` is
  true for finished items; the later of two records with one id wins).  Other settings — or
  another model — are refused with :class:`SweepConfigMismatch`, naming what differs and the fix:
  a mixed log would average incomparable numbers.  ``config.json`` is written atomically (temporary
  file, fsync, rename), so a kill while creating it cannot leave half a file.
* **State snapshots.**  Sweeps that accumulate running sums instead of per-item results (neuron
  statistics) store them with :meth:`Checkpoint.save_state`: the tensors go to a new safetensors
  file (atomically), then one log record names that file and its progress; the last record wins.
  Tensors and progress can never disagree, because the record is written only after the file.

* **Shards.**  A sweep can be split over processes (or machines sharing the directory):
  ``Checkpoint(out_dir, config, shard=(k, n))`` writes its own log in ``<dir>/shards/k-of-n/``
  (same ``config.json``), treats the items of the main log as done without writing to it, and
  owns every n-th item (:meth:`Checkpoint.owns`).  Each log keeps a single writer.  Opening the
  main log without ``shard`` appends every shard record it lacks (after checking the shard's
  settings), and :func:`read_sweep` reads the shards too, so ``--from-log`` sees them at once.
  Items are computed the same way in any process, so a sharded sweep gives the numbers of an
  unsharded one.

Errors inside a sweep are not results: :class:`SweepErrors` counts and lists them (row, fact,
error) for the result and stderr, and the sweep goes on; an item that failed is not logged, so a
resumed sweep tries it again (the same input fails the same way, so the result is unchanged).
The format is the one written by earlier versions of interp (lines ``{"id", "result"}`` plus
``config.json``), so a sweep started with an older version resumes with this one.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import InterpError

ITEMS = "items.jsonl"
CONFIG = "config.json"
SHARDS = "shards"


class SweepConfigMismatch(InterpError, ValueError):
    """A sweep directory holds results made with other settings (or another model)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform can open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a whole file so that a kill leaves either the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _normalise(config: dict) -> dict:
    return json.loads(json.dumps(config, default=str))


def read_log(path: str | Path) -> tuple[dict[str, Any], int, bytes]:
    """``(results by id, number of skipped lines, raw bytes)`` of a sweep log, read without changing it.

    A line that is not a complete ``{"id", "result"}`` record (torn by a kill, or damaged) is
    skipped and counted; every line after it is kept.  The later of two records with one id wins.
    """
    with open(path, "rb") as f:
        data = f.read()
    done: dict[str, Any] = {}
    skipped = 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
            item_id, result = str(rec["id"]), rec["result"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            skipped += 1
            continue
        done[item_id] = result
    return done, skipped, data


def parse_shard(spec) -> tuple[int, int] | None:
    """``"K/N"`` (or ``(K, N)``) → ``(K, N)`` with 1 ≤ K ≤ N; None stays None.  Anything else is a
    :class:`~interp.errors.SettingError` that says the form."""
    from .errors import SettingError

    if spec is None:
        return None
    try:
        k, n = (int(x) for x in (spec.split("/") if isinstance(spec, str) else spec))
    except (ValueError, TypeError):
        k = n = 0
    if not 1 <= k <= n:
        raise SettingError(f"shard {spec!r} is not K/N with 1 ≤ K ≤ N: give e.g. --shard 1/2 and --shard 2/2 "
                           f"to two processes, then run once without --shard to merge")
    return k, n


def shard_dir(out_dir: str | Path, shard: tuple[int, int]) -> Path:
    """Where shard ``(k, n)`` of the sweep in ``out_dir`` keeps its log: ``out_dir/shards/k-of-n``."""
    return Path(out_dir) / SHARDS / "{}-of-{}".format(*shard)


def _shard_logs(d: Path, config: dict) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(shard dir, results by id)`` of every shard log under ``d``; a shard made with other
    settings is refused (:class:`SweepConfigMismatch`) rather than mixed in."""
    for sd in sorted((d / SHARDS).glob("*-of-*")):
        if not (sd / ITEMS).is_file():
            continue
        try:
            theirs = json.loads((sd / CONFIG).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            theirs = None
        if theirs != config:
            raise SweepConfigMismatch(f"{sd} holds a shard made with other settings than {d}; delete {sd} "
                                      f"(or rerun that shard with the settings of {d / CONFIG})")
        yield sd, read_log(sd / ITEMS)[0]


def read_sweep(out_dir: str | Path) -> tuple[dict, dict[str, Any]]:
    """``(config, results by id)`` of a sweep directory and its shards, read without writing anything.

    For summaries and figures drawn from a log (also one a running sweep is still appending to:
    a torn last line is skipped).  Records of shard logs (``<dir>/shards/k-of-n/``) not yet merged
    are included.  A directory without ``config.json`` and ``items.jsonl`` raises
    :class:`~interp.errors.ResultMissingError` naming the directory.
    """
    from .errors import ResultMissingError

    d = Path(out_dir)
    if not (d / CONFIG).is_file() or not (d / ITEMS).is_file():
        raise ResultMissingError(f"{d} is not a sweep directory (no {CONFIG} + {ITEMS}); give the directory "
                                 f"a sweep writes its log to (e.g. a knockout sweep's OUT/sweep)")
    config = json.loads((d / CONFIG).read_text(encoding="utf-8"))
    done = read_log(d / ITEMS)[0]
    for _, theirs in _shard_logs(d, config):
        for k, v in theirs.items():
            done.setdefault(k, v)
    return config, done


class Checkpoint:
    """Append-only result log of one sweep in ``out_dir`` (see the module docstring).

    ``config`` is every setting that changes the results, the model's name included; it must be
    JSON-serialisable (other values are stored as ``str``).  ``shard=(k, n)`` (see
    :func:`parse_shard`) opens shard k of n instead: its log is ``out_dir/shards/k-of-n/``, the main
    log's items count as done (read, never written), and :meth:`owns` says which items are its own.
    Without ``shard``, opening merges every shard's records into the main log.
    """

    def __init__(self, out_dir: str | Path, config: dict, *, shard: tuple[int, int] | None = None):
        main = Path(out_dir)
        if main.exists() and not main.is_dir():
            raise SweepConfigMismatch(f"{main} is a file, not a sweep directory; give another --out")
        self.shard = parse_shard(shard)
        self.config = _normalise(config)
        inherited: dict[str, Any] = {}
        if self.shard is not None:
            if (main / CONFIG).is_file():   # the main log must hold the same sweep; it is only read
                self._check_config(main / CONFIG, write=False)
                if (main / ITEMS).is_file():
                    inherited = read_sweep(main)[1]
            main = shard_dir(main, self.shard)
        self.dir = main
        self.dir.mkdir(parents=True, exist_ok=True)
        self.items_path = self.dir / ITEMS
        self._check_config(self.dir / CONFIG)
        self.done: dict[str, Any] = {}
        #: lines skipped on reading (torn by a kill, or damaged): their items are computed again
        self.n_torn = 0
        self._read()
        #: records merged from shard logs when this (main) log was opened
        self.n_merged = 0
        if self.shard is None:
            self._merge_shards()
        self.done = {**inherited, **self.done}

    def owns(self, index: int) -> bool:
        """Whether the item at ``index`` (its place in the sweep's fixed order) is this shard's:
        every item without a shard, else every n-th one (shard k of n: ``index % n == k - 1``)."""
        return self.shard is None or index % self.shard[1] == self.shard[0] - 1

    def finished(self, item_id) -> bool:
        """Whether ``item_id`` is logged as done: a record that is an ``{"error": ...}`` dict (logs of
        older versions stored failures so) is not, so a resumed sweep tries that item again."""
        rec = self.done.get(str(item_id))
        return str(item_id) in self.done and not (isinstance(rec, dict) and "error" in rec)

    def pending(self, items: list, key, *, progress: bool = False, desc: str = "items", unit: str = "item"):
        """The items of this sweep (this shard's: :meth:`owns`) not yet :meth:`finished`, in order.

        ``items`` is the sweep's fixed order, ``key(item)`` its log id.  With ``progress`` a bar counts
        the owned items and starts at those already done, so a resumed sweep shows where it stands
        (``desc`` names the bar; a shard adds ``(shard k/n)``).  The bar advances when the caller asks
        for the next item, i.e. once the previous one is handled, logged or failed.
        """
        mine = [x for i, x in enumerate(items) if self.owns(i)]
        todo = [x for x in mine if not self.finished(key(x))]
        if not progress:
            yield from todo
            return
        from tqdm.auto import tqdm
        if self.shard is not None:
            desc += " (shard {}/{})".format(*self.shard)
        with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit=unit) as bar:
            for x in todo:
                yield x
                bar.update(1)

    def _merge_shards(self) -> None:
        for _, theirs in _shard_logs(self.dir, self.config):
            new = [(k, v) for k, v in theirs.items() if k not in self.done]
            for k, v in new:
                self.add(k, v)
            self.n_merged += len(new)

    # ------------------------------------------------------------------ opening
    def _check_config(self, path: Path, write: bool = True) -> None:
        """Refuse a directory (``path.parent``) whose ``config.json`` differs from this sweep's;
        write it (atomically) when there is none and ``write``."""
        d = path.parent
        old = None
        if path.exists():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                old = None
            if not isinstance(old, dict):
                if (d / ITEMS).exists() and (d / ITEMS).stat().st_size > 0:
                    raise SweepConfigMismatch(
                        f"{path} is damaged, so the results in {d} cannot be matched to their "
                        f"settings; delete {d} to start over or give another --out")
                old = None
        if old is None:
            if write:
                write_atomic(path, json.dumps(self.config, indent=1))
            return
        if old == self.config:
            return
        keys = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
        if "model" in keys:
            raise SweepConfigMismatch(
                f"{d} holds a sweep of model {old.get('model')!r}, not {self.config.get('model')!r}; "
                f"give another --out (or the same --model to resume it)")
        shown = ", ".join(f"{k}: {old.get(k)!r} → {self.config.get(k)!r}" for k in keys[:4])
        more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
        raise SweepConfigMismatch(
            f"{d} holds a sweep made with other settings ({shown}{more}); rerun with the "
            f"same settings to resume it, or give another --out (or delete it) to start over")

    def _read(self) -> None:
        if not self.items_path.exists():
            return
        self.done, self.n_torn, data = read_log(self.items_path)
        if data and not data.endswith(b"\n"):
            # a kill mid-write left a fragment: end its line so the next record starts cleanly
            self._append(b"\n")

    # ------------------------------------------------------------------ writing
    def _append(self, data: bytes) -> None:
        with open(self.items_path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def add(self, item_id, result: Any) -> None:
        """Append one finished item; durable when this returns."""
        rec = json.dumps({"id": str(item_id), "result": result}, default=str)
        self._append(rec.encode("utf-8") + b"\n")
        self.done[str(item_id)] = json.loads(rec)["result"]  # exactly what a resumed run reads back

    # ------------------------------------------------------------------ reading
    def __contains__(self, item_id) -> bool:
        return str(item_id) in self.done

    def get(self, item_id, default=None):
        """The logged result of ``item_id``, or ``default`` when it is not logged."""
        return self.done.get(str(item_id), default)

    def results(self) -> Iterator[tuple[str, Any]]:
        """``(id, result)`` of every finished item, in the order they were first finished."""
        return iter(self.done.items())

    def __len__(self) -> int:
        return len(self.done)

    # ------------------------------------------------------------------ state snapshots
    STATE_ID = "__state__"

    def save_state(self, tensors: dict, progress: dict) -> None:
        """Snapshot running sums: tensors to a new file, then a log record naming it and ``progress``."""
        from safetensors.torch import save_file
        prev = self.done.get(self.STATE_ID)
        n = (prev["seq"] + 1) if prev else 0
        name = f"state-{n:06d}.safetensors"
        tmp = self.dir / (name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        _fsync_dir(self.dir)
        self.add(self.STATE_ID, {"seq": n, "file": name, "bytes": (self.dir / name).stat().st_size,
                                 **progress})
        self._drop_stale_states(keep=name)

    def load_state(self) -> tuple[dict, dict] | None:
        """``(tensors, progress)`` of the last snapshot, or None when there is none."""
        rec = self.done.get(self.STATE_ID)
        self._drop_stale_states(keep=rec["file"] if rec else None)
        if rec is None:
            return None
        path = self.dir / rec["file"]
        if not path.exists() or path.stat().st_size != rec["bytes"]:
            raise SweepConfigMismatch(
                f"{path} (the running state named by the last record of {self.items_path}) is missing or "
                f"damaged; delete {self.dir} to start the sweep over")
        from safetensors.torch import load_file
        progress = {k: v for k, v in rec.items() if k not in ("seq", "file", "bytes")}
        return load_file(str(path)), progress

    def _drop_stale_states(self, keep: str | None) -> None:
        for p in self.dir.glob("state-*.safetensors*"):
            if p.name != keep:
                p.unlink(missing_ok=True)


# ---------------------------------------------------------------------- errors inside a sweep
@dataclass
class SweepErrors:
    """Errors inside a sweep, counted and listed; each one is also printed on stderr as it happens.

    ``items`` holds ``{"row": dataset row, "fact": short description, "error": "Type: message"}``.
    """

    what: str = "sweep"
    items: list[dict] = field(default_factory=list)
    echo: bool = True

    def add(self, row, fact: str, error: BaseException | str) -> None:
        """Record that the item ``row`` (described by ``fact``) failed with ``error``; print one line."""
        msg = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        msg = " ".join(str(msg).split())[:500]
        self.items.append({"row": row, "fact": fact, "error": msg})
        if self.echo:
            print(f"{self.what}: row {row} ({fact}) failed: {msg}; the sweep goes on", file=sys.stderr)

    def __len__(self) -> int:
        return len(self.items)

    def by_row(self) -> list[dict]:
        """The errors in dataset-row order (a resumed sweep meets them in another order)."""
        return sorted(self.items, key=lambda e: (e["row"] is None, e["row"]))

    def summary(self) -> str:
        """One line: how many items failed and the first rows."""
        return f"{len(self.items)} error(s) in {self.what}" + (
            ": " + "; ".join(f"row {e['row']}: {e['error']}" for e in self.items[:3])
            + (" …" if len(self.items) > 3 else "") if self.items else "")


def describe_fact(fact) -> tuple[int, str]:
    """``(row, "'subject' in 'prompt…'")`` of a :class:`~interp.datasets.Fact`, for error lists."""
    p = fact.prompt if len(fact.prompt) <= 80 else fact.prompt[:40] + "…" + fact.prompt[-39:]
    return fact.row, f"{fact.subject!r} in {p!r}"


def map_batches(fn, items: list, batch_size: int, errors: SweepErrors, describe) -> list:
    """``fn(batch) -> one output per item`` over ``items`` in batches, one bad item failing alone.

    A batch that raises is rerun item by item; an item that fails alone is recorded in ``errors``
    (``describe(item) -> (row, fact)``) and gets ``None``, and the sweep goes on.
    """
    out: list = []
    for i in range(0, len(items), batch_size):
        block = items[i:i + batch_size]
        try:
            out.extend(fn(block))
            continue
        except Exception:  # noqa: BLE001 — find the item that fails, keep the others
            pass
        for it in block:
            try:
                out.extend(fn([it]))
            except Exception as e:  # noqa: BLE001
                errors.add(*describe(it), e)
                out.append(None)
    return out
