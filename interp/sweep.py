"""Resumable sweeps: one JSON line per finished item, appended and flushed as it finishes.

A sweep over a dataset (causal traces of 1,000 facts, knockouts, neuron statistics, probe
extraction) writes each item's result to ``<dir>/items.jsonl`` keyed by the item's id, next to
``<dir>/config.json`` (the settings that produced it).  A killed sweep restarted with the same
settings skips the ids already written and continues; restarted with *different* settings it
refuses (a mixed file would average incomparable numbers) and names the fix.  A torn last line
(killed mid-write) is dropped on reopen.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import InterpError


class SweepConfigMismatch(InterpError, ValueError):
    """A sweep directory holds results made with other settings."""


class Checkpoint:
    def __init__(self, out_dir: str | Path, config: dict):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.items_path = self.dir / "items.jsonl"
        cfg_path = self.dir / "config.json"
        config = json.loads(json.dumps(config, default=str))
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old != config:
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise SweepConfigMismatch(
                    f"{self.dir} holds a sweep made with other settings (differ: {', '.join(diff)}); "
                    f"use another output directory or delete this one to start over")
        else:
            cfg_path.write_text(json.dumps(config, indent=1))
        self.config = config
        self.done: dict[str, Any] = {}
        if self.items_path.exists():
            good = []
            with open(self.items_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        break  # torn last line from a kill: drop it and what follows
                    self.done[str(rec["id"])] = rec["result"]
                    good.append(line if line.endswith("\n") else line + "\n")
            with open(self.items_path, "w", encoding="utf-8") as f:
                f.writelines(good)

    def __contains__(self, item_id) -> bool:
        return str(item_id) in self.done

    def add(self, item_id, result: Any) -> None:
        rec = json.dumps({"id": str(item_id), "result": result}, default=str)
        with open(self.items_path, "a", encoding="utf-8") as f:
            f.write(rec + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[str(item_id)] = result

    def results(self) -> Iterator[tuple[str, Any]]:
        return iter(self.done.items())

    def __len__(self) -> int:
        return len(self.done)
