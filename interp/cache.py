"""Activation caches: in memory (``Model.run``) and streamed to disk for datasets.

:func:`extract_activations` runs a dataset through the model in batches and writes the asked-for
sites at the asked-for positions to **shards** (safetensors, never pickle), ``shard_rows``
prompts each, beside a ``manifest.json``.  Memory stays fixed: one shard is built at a time.

Resumable and reproducible: shard ``i`` always holds prompts ``[i·shard_rows, (i+1)·shard_rows)``
batched the same way, each shard is written to a temporary file and renamed, and the manifest is
rewritten (atomically) after each shard.  A killed extraction restarted with the same arguments
skips the finished shards and produces byte-identical files to an uninterrupted run; restarted
with other arguments it refuses.  :class:`ShardedActivations` reads the result back and checks
every shard against the manifest (row count, keys, shapes, byte size), raising
:class:`~interp.errors.CacheShardError` for a corrupt or mismatched shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import CacheShardError, PromptError

MANIFEST = "manifest.json"
FORMAT = "interp-activations/1"


def _key(site: str, layer: int | None) -> str:
    return site if layer is None else f"{site}.{layer}"


def _prompts_digest(prompts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def extract_activations(model, prompts: Sequence[str], reads: str | Iterable, out_dir: str | Path, *,
                        layers: Iterable[int] | None = None, positions: Sequence[int] = (-1,),
                        batch_size: int = 16, shard_rows: int = 256, dtype: torch.dtype | None = None,
                        progress: bool = True) -> "ShardedActivations":
    """Stream activations of ``prompts`` to ``out_dir`` in resumable shards.

    Args:
        reads: site names (all layers, or ``layers``) or ``(site, layer)`` pairs.
        positions: prompt-relative positions kept for every prompt (default: last token).
        batch_size: prompts per forward.  shard_rows: prompts per shard file.
        dtype: storage dtype (default: the model's).
    Returns:
        :class:`ShardedActivations` over the finished directory.
    """
    prompts = list(prompts)
    if not prompts:
        raise PromptError("no prompts to extract: pass a non-empty list of strings")
    if positions is None:
        raise PromptError("positions=None cannot be stacked across prompts of different lengths: "
                          "give prompt-relative positions, e.g. [-1]")
    if batch_size < 1 or shard_rows < 1:
        raise PromptError("batch_size and shard_rows must be ≥ 1")
    points = model.points(reads, layers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = (len(prompts) + shard_rows - 1) // shard_rows
    config = {
        "format": FORMAT, "model": model.name, "n_layers": model.n_layers,
        "points": [_key(s, l) for s, l in points], "positions": list(positions),
        "n_prompts": len(prompts), "prompts_sha256": _prompts_digest(prompts),
        "shard_rows": shard_rows, "batch_size": batch_size,
        "dtype": str(dtype or model.dtype).replace("torch.", ""),
    }
    mpath = out / MANIFEST
    if mpath.exists():
        manifest = json.loads(mpath.read_text())
        if manifest.get("config") != config:
            old = manifest.get("config", {})
            if old.get("model") != config["model"]:
                raise CacheShardError(f"{out} holds an extraction of model {old.get('model')!r}, not "
                                      f"{config['model']!r}; use another directory (--cache / --out)")
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise CacheShardError(f"{out} holds an extraction made with other arguments (differ: "
                                  f"{', '.join(diff)}); use another directory or delete it")
    else:
        manifest = {"config": config, "shards": [], "complete": False}
        _write_json_atomic(mpath, manifest)
    for stale in out.glob("*.tmp"):
        stale.unlink()
    done = {s["index"] for s in manifest["shards"]}
    from safetensors.torch import save_file
    todo = [i for i in range(n_shards) if i not in done]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(prompts), initial=len(prompts) - sum(
            min(shard_rows, len(prompts) - i * shard_rows) for i in todo), desc="activations", unit="prompt")
    store_dtype = dtype or model.dtype
    for i in todo:
        lo, hi = i * shard_rows, min((i + 1) * shard_rows, len(prompts))
        parts: dict[str, list[Tensor]] = {_key(s, l): [] for s, l in points}
        for b0 in range(lo, hi, batch_size):
            chunk = prompts[b0:min(b0 + batch_size, hi)]
            res = model.run(chunk, reads=points, positions=list(positions), logits="none",
                            max_rows=batch_size)
            for s, l in points:
                parts[_key(s, l)].append(res.cache[s, l].to(store_dtype))
            if bar is not None:
                bar.update(len(chunk))
        tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
        name = f"shard-{i:05d}.safetensors"
        tmp = out / (name + ".tmp")
        save_file(tensors, str(tmp))  # no metadata: its key order is not stable across runs
        os.replace(tmp, out / name)
        manifest["shards"].append({"index": i, "file": name, "start": lo, "end": hi,
                                   "bytes": (out / name).stat().st_size,
                                   "shapes": {k: list(t.shape) for k, t in tensors.items()}})
        manifest["shards"].sort(key=lambda s: s["index"])
        manifest["complete"] = len(manifest["shards"]) == n_shards
        _write_json_atomic(mpath, manifest)
    if bar is not None:
        bar.close()
    if not manifest["complete"]:
        manifest["complete"] = len(manifest["shards"]) == n_shards
        _write_json_atomic(mpath, manifest)
    return ShardedActivations(out)


class ShardedActivations:
    """Read side of :func:`extract_activations`: ``acts.load("resid_post", 12)``."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        mpath = self.dir / MANIFEST
        if not mpath.exists():
            raise CacheShardError(f"no {MANIFEST} in {self.dir}: not an activation cache "
                                  f"(make one with interp.extract_activations)")
        try:
            self.manifest = json.loads(mpath.read_text())
            self.config = self.manifest["config"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CacheShardError(f"{mpath} is corrupt ({e}); delete the directory and extract again") from None
        if self.config.get("format") != FORMAT:
            raise CacheShardError(f"{mpath}: unknown format {self.config.get('format')!r}, expected {FORMAT}")

    @property
    def complete(self) -> bool:
        """Whether every shard of the extraction is written."""
        return bool(self.manifest.get("complete"))

    @property
    def n_prompts(self) -> int:
        """How many prompts the extraction covers."""
        return self.config["n_prompts"]

    @property
    def points(self) -> list[str]:
        """The ``(site, layer)`` points stored in the shards."""
        return list(self.config["points"])

    def _read_shard(self, shard: dict, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        from safetensors import safe_open
        path = self.dir / shard["file"]
        if not path.exists():
            raise CacheShardError(f"shard {shard['file']} listed in the manifest is missing; "
                                  f"rerun the same extraction to rebuild it")
        if path.stat().st_size != shard["bytes"]:
            raise CacheShardError(f"shard {shard['file']} has {path.stat().st_size} bytes, the manifest "
                                  f"says {shard['bytes']}: it is truncated or was replaced; delete it and "
                                  f"rerun the extraction")
        out = {}
        try:
            with safe_open(str(path), framework="pt") as f:
                have = set(f.keys())
                for k in (keys or shard["shapes"].keys()):
                    if k not in have:
                        raise CacheShardError(f"shard {shard['file']} lacks {k!r}: it does not match "
                                              f"its manifest; delete it and rerun the extraction")
                    t = f.get_tensor(k)
                    if list(t.shape) != shard["shapes"][k] or t.shape[0] != shard["end"] - shard["start"]:
                        raise CacheShardError(f"shard {shard['file']}: {k} has shape {list(t.shape)}, the "
                                              f"manifest says {shard['shapes'][k]}")
                    out[k] = t
        except CacheShardError:
            raise
        except Exception as e:  # safetensors raises its own errors for a bad header
            raise CacheShardError(f"shard {shard['file']} is corrupt ({type(e).__name__}: {e}); "
                                  f"delete it and rerun the extraction") from None
        return out

    def iter_shards(self, keys: Sequence[str] | None = None) -> Iterator[tuple[int, int, dict[str, Tensor]]]:
        """``(first_row, n_rows, {key: tensor})`` for each shard, in row order (fixed memory)."""
        for s in self.manifest["shards"]:
            yield s["start"], s["end"], self._read_shard(s, keys)

    def load(self, site: str, layer: int | None = None) -> Float[Tensor, "prompt pos ..."]:
        """All rows of one site (and layer), ``[n_prompts, n_positions, ...]``."""
        k = _key(site, layer)
        if k not in self.points:
            raise CacheShardError(f"{k!r} was not extracted; extracted: {', '.join(self.points)}")
        if not self.complete:
            raise CacheShardError(f"{self.dir}: extraction is incomplete "
                                  f"({len(self.manifest['shards'])} shards done); rerun it to finish")
        return torch.cat([t[k] for _, _, t in self.iter_shards([k])])

    def verify(self) -> None:
        """Read every shard once; raise :class:`CacheShardError` on the first bad one."""
        for _ in self.iter_shards():
            pass
