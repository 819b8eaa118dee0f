"""Dead, n-gram and positional neurons of a gated MLP, streamed over a corpus (Voita et al. 2023).

Voita et al. ("Neurons in LLMs: dead, n-gram, positional") classify the ReLU neurons of OPT by
whether they fire (``a > 0``): *dead* neurons never fire on a large diverse corpus, *token /
n-gram detectors* fire on a few tokens (n-grams), *positional* neurons fire depending on the
position.  A SwiGLU neuron ``a = silu(gate) · up`` is almost never exactly 0, so each definition
needs a translation; this module makes the translation explicit and keeps everything it needs to
change its mind afterwards.

**What the passes keep** (fixed memory, independent of the corpus length), per layer and neuron,
for each *signal* — ``gate`` = ``max(silu(gate(ln2 x)), 0)``, how far the gate is open (silu's
negative lobe, ≥ −0.28, is a closed gate), ``up`` = ``up(ln2 x)`` and ``post`` = ``silu(gate)·up``,
the neuron's activation (``mlp_post``, the input of the down-projection):

* a **log-scale histogram of |x|**, read off the float32 bits (exponent and the top ``mbits``
  mantissa bits: ``2^mbits`` bins per octave over [2^e_min, 2^e_max], see :class:`Grid`), so the
  count of tokens with ``|x|`` above *any* grid edge is exact, after the pass, for every neuron;
* the layer's pooled activation **energy per magnitude bin** (``Σ x²``), max ``|x|``, sums of
  ``x`` and ``x²``;
* for ``post`` only: sums of ``a`` and ``a²`` **per position** (→ η², the share of variance
  explained by position, and each neuron's position profile) and the hashed energy sketch and
  candidate traces of :mod:`interp.neurons.ngrams` (→ exact token / bigram detectors).

**The activity threshold.**  A token is *active* for a neuron when ``|x| ≥ τ_l``, where ``τ_l``
is per layer (and signal): with ``threshold_kind="energy"`` (default) it is the largest grid
edge such that all of the layer's entries below it together carry at most ``threshold`` (1%) of
the layer's energy ``Σ x²``.  Why this choice: (1) on a ReLU model, where an inactive neuron
contributes exactly 0, it is Voita's ``a > 0`` as ``threshold → 0``; (2) it is functional —
zeroing every inactive entry removes at most 1% of what the layer's neurons write (their write
is ``a · w_out``), so "inactive" means "negligible", which a fixed absolute cut (the old
``|a| > 0.1``) cannot promise across layers whose scales differ 50×; (3) it does not force each
layer's active fraction (a quantile rule would make every layer equally sparse by construction,
erasing the layer-wise sparsity Voita report); (4) per-layer magnitude cut-offs taken from the
activation distribution are how the SwiGLU sparsity literature defines "active" (CATS, Lee et
al. 2024, thresholds ``|silu(gate)|`` per layer).  One guard: in some layers a neuron or two
take values 10³–10⁴× the layer's typical scale on a few tokens (*massive activations*, Sun et al.
2024 — in the default model layer 11 holds 98% of its energy in two neurons at the first token
of a window); counted as they are, they would make every other entry of the layer negligible.
So the layer's energy is computed with its top :data:`ENERGY_CLIP` (0.01%) of entries counted at
that quantile.  ``threshold_kind="abs"`` uses ``|x| ≥ threshold`` instead.  Both are applied to
the saved histograms after the passes: rerunning with the same ``checkpoint_dir`` and another
threshold recomputes every count without a forward.

**Criteria** (on ``post``, the neuron's output; ``gate`` and ``up`` are reported alongside):
*dead* — never active (strict); *rare* — active on < 1% of tokens (Voita's variant); *token /
bigram detector* — its top-``k`` unigrams / bigrams carry ≥ ``detector_share`` of its energy
(exact counts, see :mod:`interp.neurons.ngrams`); *positional* — position explains ≥
``positional_eta2`` of its variance (η², over positions ≥ 1).  Position 0 of every window is left
out of the positional and n-gram statistics: the first token is the attention sink, whose
activations are outliers in most models and would otherwise dominate both.

**Pipeline.**  Texts are cut into windows of ``max_len`` tokens (positions restart at 0) and
batched.  (1) A *calibration* pass over every ``calib_every``-th window (10%, spread over every
text) picks the n-gram candidates from the hashed bound and measures ``gate`` and ``up``: no
engine exposes them as read sites, so they are recomputed from ``resid_mid`` with the model's own
modules (:meth:`~interp.arch.ModelAdapter.mlp_gate_up`; their product equals the engine's
``mlp_post`` bit for bit), which costs two of the MLP's three matmuls — half a forward — and is
therefore paid on the sample only (``calib_every=1`` measures them on every token).  (2) The
*main* pass reads ``mlp_post`` on every token: ``post`` statistics, positions, sketch, traces.
(3) A *top-up* pass runs only if the main pass's hashed bound finds a possible detector the
calibration missed.  Then the exact n-gram counts are read from the traces.

**Resumable.**  With ``checkpoint_dir`` each pass snapshots its state every ``save_every``
batches through the sweep log (:meth:`interp.sweep.Checkpoint.save_state`), and candidate traces
go to shards named in that snapshot; a killed run restarted with the same settings continues after
the last snapshot and gives the same numbers, a run with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import DatasetError, InterpError
from ..results import Result
from . import ngrams

TEXT_FIELDS = ("text", "wikipedia_content", "content", "document", "passage")
SIGNALS = ("gate", "up", "post")
SIGNAL_LABELS = {"gate": "silu(gate)⁺", "up": "up", "post": "silu(gate)·up"}
#: Voita's variant of "dead": active on fewer than this fraction of tokens
RARE_FREQ = 0.01
#: the energy threshold rule counts a layer's top 0.01% of entries as if they sat at that quantile
ENERGY_CLIP = 1e-4


# ---------------------------------------------------------------------- corpus
def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
                           f"fix or replace the file") from None


def iter_texts(corpus, text_field: str | None = None) -> Iterator[str]:
    """Texts of a corpus: a list of strings, a ``datasets`` dataset, or a path (or a list of paths).

    Paths: ``.json`` (a list of strings or of records), ``.jsonl`` / ``.jsonl.gz`` (records),
    ``.txt`` (paragraphs separated by blank lines), or a directory of such files.  Records give
    their text through ``text_field`` (default: the first of ``text``, ``wikipedia_content``,
    ``content``, ``document``, ``passage`` present).
    """
    def from_record(rec, where):
        if isinstance(rec, str):
            return rec
        if isinstance(rec, dict):
            keys = [text_field] if text_field else [k for k in TEXT_FIELDS if k in rec]
            if keys and keys[0] in rec and isinstance(rec[keys[0]], str):
                return rec[keys[0]]
            raise DatasetError(f"{where}: record has no text field "
                               f"{text_field or ' / '.join(TEXT_FIELDS)} (fields: {', '.join(list(rec)[:8])}); "
                               f"pass text_field=")
        raise DatasetError(f"{where}: cannot read text from a {type(rec).__name__}")

    if isinstance(corpus, (list, tuple)) and corpus and all(isinstance(c, Path) for c in corpus):
        for p in corpus:
            yield from iter_texts(p, text_field)
        return
    if isinstance(corpus, (str, Path)):
        p = Path(corpus)
        if not p.exists():
            raise DatasetError(f"corpus path {p} does not exist")
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".json", ".jsonl", ".txt", ".gz")) \
            if p.is_dir() else [p]
        for f in files:
            if f.name.endswith((".jsonl", ".jsonl.gz")):
                import gzip
                op = gzip.open if f.suffix == ".gz" else open
                with op(f, "rt", encoding="utf-8") as fh:
                    for i, line in enumerate(fh):
                        if line.strip():
                            yield from_record(_json(line, f"{f}:{i + 1}"), f"{f}:{i + 1}")
            elif f.suffix == ".json":
                data = _json(f.read_text(encoding="utf-8"), str(f))
                data = data if isinstance(data, list) else [data]
                for i, rec in enumerate(data):
                    yield from_record(rec, f"{f}[{i}]")
            elif f.suffix == ".txt":
                for para in f.read_text(encoding="utf-8").split("\n\n"):
                    if para.strip():
                        yield para
        return
    if hasattr(corpus, "column_names") and hasattr(corpus, "__iter__"):  # datasets.Dataset
        field_ = text_field or next((k for k in TEXT_FIELDS if k in corpus.column_names), None)
        if field_ is None:
            raise DatasetError(f"dataset has no text column ({', '.join(corpus.column_names)}); pass text_field=")
        for rec in corpus:
            yield rec[field_]
        return
    if isinstance(corpus, Iterable):
        for i, rec in enumerate(corpus):
            yield from_record(rec, f"corpus[{i}]")
        return
    raise DatasetError(f"cannot read a corpus from a {type(corpus).__name__}: give texts, a path or a dataset")


def iter_windows(tokenizer, texts: Iterable[str], max_len: int, min_len: int = 4,
                 max_tokens: int | None = None) -> Iterator[list[int]]:
    """Token windows of at most ``max_len`` tokens (shorter than ``min_len`` dropped)."""
    total = 0
    for t in texts:
        if not t or not t.strip():
            continue
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), max_len):
            w = ids[s:s + max_len]
            if len(w) < min_len:
                continue
            if max_tokens is not None and total + len(w) > max_tokens:
                w = w[:max_tokens - total]
                if len(w) < min_len:
                    return
            total += len(w)
            yield w
            if max_tokens is not None and total >= max_tokens:
                return


def describe_corpus(corpus) -> list[str]:
    """Names of a corpus's sources for a result: ``folder/file`` of each path (never an absolute path)."""
    items = corpus if isinstance(corpus, (list, tuple)) and corpus and all(isinstance(c, Path) for c in corpus) \
        else [corpus]
    out = []
    for c in items:
        if isinstance(c, (str, Path)) and Path(c).exists():
            p = Path(c)
            out.append(f"{p.parent.name}/{p.name}" if p.is_file() else p.name + "/")
        else:
            out.append(f"in-memory {type(c).__name__}")
    return out


def corpus_windows(tokenizer, corpus, *, text_field=None, max_len=128, max_tokens=None) -> tuple[list[list[int]], dict]:
    """All windows of a corpus and its record (sources, texts, windows, tokens, sha256 of the ids)."""
    n_texts = 0

    def counted(texts):
        nonlocal n_texts
        for t in texts:
            n_texts += 1
            yield t
    wins = list(iter_windows(tokenizer, counted(iter_texts(corpus, text_field)), max_len, max_tokens=max_tokens))
    if not wins:
        raise DatasetError("the corpus is empty: no text with at least 4 tokens; give a list of texts, a "
                           "datasets dataset or a file with text (e.g. ConceptVectors' wikipedia_content)")
    h = hashlib.sha256()
    for w in wins:
        h.update(torch.tensor(w, dtype=torch.int32).numpy().tobytes())
        h.update(b"|")
    info = {"sources": describe_corpus(corpus), "n_texts": n_texts, "n_windows": len(wins),
            "n_tokens": sum(map(len, wins)), "max_len": max_len, "sha256": h.hexdigest()[:16]}
    return wins, info


# ---------------------------------------------------------------------- histogram grid
@dataclass(frozen=True)
class Grid:
    """Log-scale magnitude bins read off a float32's bits (no log, no search).

    A float32 ``|x| = 2^e · (1 + f)`` keeps its biased exponent and mantissa in bits 30..0, so
    ``bits >> (23 - mbits)`` is ``(e + 127) · 2^mbits + ⌊f · 2^mbits⌋``: a log-scale bin with
    ``2^mbits`` bins per octave whose lower edges ``2^e (1 + j / 2^mbits)`` are exact floats.  One
    shift and one clamp per value.  Magnitudes below ``2^e_min`` share the lowest bin (lower edge 0),
    those at or above ``2^(e_max-1)·(2 - 2^-mbits)`` the highest.  ``|x| ≥ edge`` for any edge is
    then counted exactly from the histogram.
    """

    mbits: int = 2
    e_min: int = -12
    e_max: int = 10

    @property
    def n_mag(self) -> int:
        """Number of magnitude bins (4 per octave with ``mbits=2``)."""
        return (self.e_max - self.e_min) << self.mbits

    @property
    def base(self) -> int:
        """Raw key of the lowest bin: bin = raw key − base."""
        return (self.e_min + 127) << self.mbits

    def raw_keys(self, absx: Float[Tensor, "..."]) -> Int[Tensor, "..."]:
        """``base + bin`` of non-negative float32 values (see the class docstring)."""
        return (absx.view(torch.int32) >> (23 - self.mbits)).clamp_(self.base, self.base + self.n_mag - 1)

    def edges(self) -> Float[Tensor, "mag"]:
        """Lower edge of every magnitude bin (float64; the first is 0)."""
        m = torch.arange(self.n_mag, dtype=torch.float64)
        e = self.e_min + torch.div(m, 2 ** self.mbits, rounding_mode="floor")
        out = torch.pow(2.0, e) * (1 + torch.remainder(m, 2 ** self.mbits) / 2 ** self.mbits)
        out[0] = 0.0
        return out

    def snap(self, value: float) -> int:
        """Index of the largest edge ≤ ``value`` (at least 1: edge 0 would count every token)."""
        e = self.edges()
        return max(1, int((e <= value).sum()) - 1)

    def to_dict(self) -> dict:
        """The grid's parameters (recorded in the result and in the checkpoint config)."""
        return {"mbits": self.mbits, "e_min": self.e_min, "e_max": self.e_max}


# ---------------------------------------------------------------------- running state
class PassState:
    """The running sums of one pass (see the module docstring); each part is optional.

    * ``signals`` — per signal ``[signal, layer, …]``: the |x| histogram (bin-major ``[bin, neuron]``,
      so the counts of one token row land close together), the energy per bin pooled over the
      layer, ``Σx``, ``Σx²`` and ``max |x|``;
    * ``max_len`` — ``post`` sums of ``a`` and ``a²`` per position;
    * ``n_hashes`` — the hashed energy sketch of ``post`` (positions ≥ 1; row ``H·B`` is a sink for
      position-0 tokens).
    """

    def __init__(self, n_layers: int, d_mlp: int, *, signals: Sequence[str] = (), grid: Grid = Grid(),
                 max_len: int | None = None, n_hashes: int = 0, n_buckets: int = 0, device="cpu"):
        S, L, N = len(signals), n_layers, d_mlp
        f64 = torch.float64
        self.signals, self.grid, self.H, self.B = list(signals), grid, n_hashes, n_buckets
        if n_hashes:
            self.sketch = torch.zeros(L, n_hashes * n_buckets + 1, N, device=device)
        if S:
            self.hist = torch.zeros(S, L, grid.n_mag, N, dtype=torch.int32, device=device)
            self.bin_energy = torch.zeros(S, L, grid.n_mag, dtype=f64, device=device)
            self.sum = torch.zeros(S, L, N, dtype=f64, device=device)
            self.sumsq = torch.zeros(S, L, N, dtype=f64, device=device)
            self.max_abs = torch.zeros(S, L, N, device=device)
            self._offset = torch.arange(N, dtype=torch.int32, device=device) - grid.base * N
        if max_len:
            self.pos_sum = torch.zeros(L, max_len, N, dtype=f64, device=device)
            self.pos_sumsq = torch.zeros(L, max_len, N, dtype=f64, device=device)
            self.pos_tokens = torch.zeros(max_len, dtype=torch.int64, device=device)

    def tensors(self) -> dict[str, Tensor]:
        """The running sums by name: what a snapshot saves and :meth:`load` restores."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor) and not k.startswith("_")}

    def load(self, saved: dict[str, Tensor]) -> None:
        """Restore the running sums from a snapshot (typed error if it does not match this state)."""
        for k, v in self.tensors().items():
            if k not in saved or saved[k].shape != v.shape:
                raise InterpError(f"saved state lacks {k!r} or has another shape; delete the checkpoint directory")
            v.copy_(saved[k].to(v.device))

    # ------------------------------------------------------------------ folding one batch in
    def add_signal(self, s: int, j: int, x: Float[Tensor, "tok neuron"], xx: Float[Tensor, "tok neuron"]) -> None:
        """Fold one signal of one layer in: eight passes over ``x`` (abs, key, bin·N + neuron, two
        bincounts, two sums, max)."""
        g, N = self.grid, x.shape[1]
        y = x.abs()
        key = g.raw_keys(y)
        idx = torch.add(self._offset, key, alpha=N)
        self.hist[s, j] += torch.bincount(idx.view(-1), minlength=g.n_mag * N).view(-1, N).to(torch.int32)
        self.bin_energy[s, j] += torch.bincount(key.view(-1), weights=xx.view(-1),
                                                minlength=g.base + g.n_mag)[g.base:].double()
        self.sum[s, j] += x.sum(0).double()
        self.sumsq[s, j] += xx.sum(0).double()
        self.max_abs[s, j] = torch.maximum(self.max_abs[s, j], y.amax(0))

    def add_positions(self, j: int, x3: Float[Tensor, "batch pos neuron"], xx3: Float[Tensor, "batch pos neuron"],
                      pad_groups: list[tuple[int, Tensor]]) -> None:
        """Fold ``post`` sums per position in; ``pad_groups`` lists (left padding, rows) so that
        position 0 is each window's first real token."""
        W = x3.shape[1]
        for p, rows in pad_groups:
            sel = slice(None) if len(rows) == x3.shape[0] else rows
            self.pos_sum[j, :W - p] += x3[sel, p:].sum(0).double()
            self.pos_sumsq[j, :W - p] += xx3[sel, p:].sum(0).double()
            if j == 0:  # tokens per position: counted once per batch, with the first layer
                self.pos_tokens[:W - p] += len(rows)

    def buckets(self, ids: Int[Tensor, "tok"], pos: Int[Tensor, "tok"]) -> Int[Tensor, "hash tok"]:
        """Sketch bucket of every token under every hash; position-0 tokens go to the sink row."""
        hb = ngrams.hash_buckets(ids, self.H, self.B)
        return torch.where(pos[None] == 0, self.H * self.B, hb)

    def add_sketch(self, j: int, energy: Float[Tensor, "tok neuron"], hb: Int[Tensor, "hash tok"]) -> None:
        """Add every token's energy ``a²`` to its bucket under each hash."""
        for h in range(self.H):
            self.sketch[j].index_add_(0, hb[h], energy)

    # ------------------------------------------------------------------ reading out
    def energy(self) -> Float[Tensor, "layer neuron"]:
        """Σ a² of ``post`` over positions ≥ 1 (every token lands in exactly one bucket of hash 0)."""
        return self.sketch[:, :self.B].double().sum(1)

    def bound(self, k: int) -> Float[Tensor, "layer neuron"]:
        """Upper bound of every neuron's top-``k`` unigram and bigram energy share."""
        return ngrams.share_upper_bound(self.sketch[:, :-1], self.energy(), self.H, k)


# ---------------------------------------------------------------------- resumable passes
class _Pass:
    """One resumable pass over fixed batches (see the module docstring, *Resumable*).

    ``step(windows) -> (trace, ids, prev) | None`` folds one batch into ``state``; traces are
    buffered and written as one shard per snapshot, so a snapshot names exactly the shards it covers.
    """

    def __init__(self, name: str, root: Path | None, config: dict, state: PassState, save_every: int):
        self.name, self.state, self.save_every = name, state, save_every
        self.ck = None
        self.progress = {"batches": 0, "n_tokens": 0, "shards": 0, "seconds": 0.0}
        if root is not None:
            from ..sweep import Checkpoint
            self.dir = Path(root) / name
            self.ck = Checkpoint(self.dir, {"pass": name, **config})
            saved = self.ck.load_state()
            if saved is not None:
                tensors, progress = saved
                state.load(tensors)
                self.progress.update(progress)
            self._tmp = None
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"interp-{name}-")
            self.dir = Path(self._tmp.name)
        for stale in self.dir.glob("trace-*.safetensors*"):  # written after the last snapshot
            if stale.name.endswith(".tmp") or int(stale.name[6:11]) >= self.progress["shards"]:
                stale.unlink()
        self._buf: list[tuple[Tensor, Tensor, Tensor]] = []

    @property
    def shards(self) -> list[Path]:
        return [self.dir / f"trace-{i:05d}.safetensors" for i in range(self.progress["shards"])]

    def _snapshot(self) -> None:
        if self._buf:
            tr, ids, prev = (torch.cat(x) for x in zip(*self._buf))
            ngrams.write_trace(self.dir / f"trace-{self.progress['shards']:05d}.safetensors", tr.T.cpu(),
                               ids.cpu(), prev.cpu())
            self.progress["shards"] += 1
            self._buf = []
        if self.ck is not None:
            self.ck.save_state({k: v.cpu() for k, v in self.state.tensors().items()}, dict(self.progress))

    def run(self, batches: list[list[list[int]]], step: Callable, budget: list, progress_bar: bool) -> bool:
        """Run the remaining batches; False when ``budget`` (batches left in this call) ran out."""
        done = self.progress["batches"]
        if done > len(batches):
            raise InterpError(f"the saved {self.name} pass in {self.dir} already covers {done} batches, more than the "
                              f"{len(batches)} asked for; ask for at least {done} (main_batches) or delete {self.dir}")
        todo = range(done, len(batches))
        if progress_bar and len(todo):
            from tqdm.auto import tqdm
            todo = tqdm(todo, desc=f"neuron stats ({self.name})", unit="batch")
        t0 = time.perf_counter()
        finished = True
        for bi in todo:
            if budget[0] is not None and budget[0] <= 0:
                finished = False
                break
            out = step(batches[bi])
            if out is not None:
                self._buf.append(out)
            self.progress["batches"] = bi + 1
            self.progress["n_tokens"] += sum(map(len, batches[bi]))
            if budget[0] is not None:
                budget[0] -= 1
            if (bi + 1) % self.save_every == 0 or bi + 1 == len(batches):
                self.progress["seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self._snapshot()
        if not finished and self._buf:
            # a partial group cannot be snapshotted (its batches would be counted twice): redo them
            self._buf = []
        return finished and self.progress["batches"] == len(batches)


def _batches(windows: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    return [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]


def _flat_ids(wins: list[list[int]], device) -> tuple[Tensor, Tensor, Tensor]:
    """Token ids, previous-token ids (-1 at position 0) and positions of a batch's windows, in the
    order of ``x[attention_mask]`` for a left-padded batch."""
    ids = torch.tensor([t for w in wins for t in w], device=device)
    prev = torch.tensor([p for w in wins for p in [-1] + w[:-1]], device=device)
    pos = torch.tensor([i for w in wins for i in range(len(w))], device=device)
    return ids, prev, pos


def _pad_groups(batch) -> list[tuple[int, Tensor]]:
    pads = torch.tensor(batch.pad)
    return [(int(p), (pads == p).nonzero().flatten()) for p in pads.unique()]


# ---------------------------------------------------------------------- result
@dataclass
class NeuronStats(Result):
    """Per-neuron corpus statistics of one model (see the module docstring for every definition).

    Tensors: ``[signal, layer, neuron]`` for the per-signal statistics, ``[layer, neuron]`` for the
    ``post`` criteria.  ``uni_share`` / ``bi_share`` are exact where ``share_exact`` is true (every
    n-gram candidate) and otherwise the hashed upper bound, which is below the detector cut unless
    ``search["n_unresolved"]`` > 0.  ``detectors`` lists every token or bigram detector with its
    n-grams and value-vector readout; ``per_layer`` the counts.
    """

    stem = "neuron_stats"
    tensor_fields = ("tau", "freq", "max_abs", "mean", "rms", "mag_hist", "mag_edges", "energy", "eta2",
                     "uni_share", "bi_share", "share_exact", "dead", "rare", "token_detector", "bigram_detector",
                     "positional", "profile_neurons", "profiles")
    json_tensors = False

    model: str
    engine: str
    layers: list[int]
    signals: list[str]
    corpus: dict
    threshold: dict
    params: dict
    n_tokens: int
    #: tokens each signal was measured on (gate and up: the calibration sample)
    signal_tokens: dict
    tau: Float[Tensor, "signal layer"]
    freq: Float[Tensor, "signal layer neuron"]
    max_abs: Float[Tensor, "signal layer neuron"]
    mean: Float[Tensor, "signal layer neuron"]
    rms: Float[Tensor, "signal layer neuron"]
    mag_hist: Int[Tensor, "signal layer mag"]
    mag_edges: Float[Tensor, "mag"]
    energy: Float[Tensor, "layer neuron"]
    eta2: Float[Tensor, "layer neuron"]
    uni_share: Float[Tensor, "layer neuron"]
    bi_share: Float[Tensor, "layer neuron"]
    share_exact: Bool[Tensor, "layer neuron"]
    dead: Bool[Tensor, "layer neuron"]
    rare: Bool[Tensor, "layer neuron"]
    token_detector: Bool[Tensor, "layer neuron"]
    bigram_detector: Bool[Tensor, "layer neuron"]
    positional: Bool[Tensor, "layer neuron"]
    profile_neurons: Int[Tensor, "profile 2"]
    profiles: Float[Tensor, "profile pos"]
    detectors: list = field(default_factory=list)
    per_layer: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def summary_line(self) -> str:
        """One line: model, tokens and the total count of each neuron type."""
        counts = ", ".join(f"{k}={int(getattr(self, k).sum())}" for k in ("dead", "rare", "token_detector",
                                                                         "bigram_detector", "positional"))
        return f"NeuronStats(model={self.model!r}, n_tokens={self.n_tokens}, {counts})"

    # ------------------------------------------------------------------ figures
    def figure(self):
        """Layer-wise counts of dead, rare, token-detector, bigram-detector and positional neurons."""
        import plotly.graph_objects as go

        from ..figures import style
        pl, p = self.per_layer, self.params
        names = {"dead": "dead (never active)", "rare": f"rare (active on < {RARE_FREQ:.0%} of tokens)",
                 "token_detector": f"token detector (top-{p['detector_top']} tokens ≥ {p['detector_share']:.0%} "
                                   f"of energy)",
                 "bigram_detector": f"bigram detector (top-{p['detector_top']} bigrams ≥ {p['detector_share']:.0%})",
                 "positional": f"positional (η² ≥ {p['positional_eta2']})"}
        fig = go.Figure()
        for k, lab in names.items():
            fig.add_trace(go.Scatter(x=self.layers, y=pl[k], mode="lines+markers", name=lab))
        fig.update_xaxes(title="layer")
        fig.update_yaxes(title=f"neurons (of {self.freq.shape[-1]} per layer)", rangemode="tozero")
        return style(fig, title=f"Neuron types per layer — {self.model}, {self.n_tokens:,} tokens<br>"
                                f"<sup>{self.threshold_label()}</sup>", width=1000)

    def threshold_label(self) -> str:
        """The activity threshold in words, for figure titles and captions."""
        t = self.threshold
        return (f"active = |a| ≥ τ_l, entries below τ_l carry ≤ {t['value']:.0%} of the layer's energy"
                if t["kind"] == "energy" else f"active = |a| ≥ {float(self.tau.flatten()[0]):.4g}")

    def figure_frequency(self, bins: int = 48):
        """Ridge plot: per layer, the histogram over neurons of log10(activation frequency), per signal."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ..figures import COLORS, style
        S = len(self.signals)
        lo = math.log10(1.0 / max(max(self.signal_tokens.values()), 1))
        edges = torch.linspace(lo, 0.0, bins + 1)
        centers = ((edges[1:] + edges[:-1]) / 2).tolist()
        fig = make_subplots(rows=1, cols=S, shared_yaxes=True, horizontal_spacing=0.03,
                            subplot_titles=[SIGNAL_LABELS[s] for s in self.signals])
        for s, name in enumerate(self.signals):
            floor = 1.0 / max(self.signal_tokens[name], 1)  # never-active neurons sit at 1/tokens
            for j, l in enumerate(reversed(self.layers)):
                jj = len(self.layers) - 1 - j
                x = torch.log10(self.freq[s, jj].double().clamp_min(floor)).float()
                h = torch.histc(x, bins=bins, min=lo, max=0.0)
                h = (h / h.max().clamp_min(1) * 1.8).tolist()  # ridge height: up to ~2 rows
                fig.add_trace(go.Scatter(x=centers, y=[l + v for v in h], mode="lines", line=dict(width=1, color="#333"),
                                         fill=None, showlegend=False, hoverinfo="skip"), row=1, col=s + 1)
                fig.add_trace(go.Scatter(x=centers, y=[l] * len(centers), mode="lines", line=dict(width=0),
                                         fill="tonexty", fillcolor=COLORS[s % len(COLORS)], opacity=0.8,
                                         showlegend=False, hoverinfo="skip"), row=1, col=s + 1)
            top = self.layers[-1] + 2
            fig.add_trace(go.Scatter(x=[math.log10(RARE_FREQ)] * 2, y=[self.layers[0], top], mode="lines",
                                     line=dict(dash="dot", color="#555", width=1), showlegend=False,
                                     hoverinfo="skip"), row=1, col=s + 1)
            fig.update_xaxes(title="log₁₀ activation frequency", range=[lo, 0.05], row=1, col=s + 1)
        fig.update_yaxes(title="layer", row=1, col=1, dtick=max(1, len(self.layers) // 10))
        return style(fig, title=f"Activation frequency of each neuron, per layer (dotted: active on {RARE_FREQ:.0%} "
                                f"of tokens)", width=1200, height=900)

    def figure_magnitude(self):
        """Pooled |x| distribution per layer (heatmap, log counts) with each layer's threshold τ_l."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ..figures import SEQUENTIAL, style
        S = len(self.signals)
        edges = self.mag_edges.double()
        lo = edges.clone()
        lo[0] = edges[1] / 2
        fig = make_subplots(rows=1, cols=S, shared_yaxes=True, subplot_titles=[SIGNAL_LABELS[s] for s in self.signals],
                            horizontal_spacing=0.03)
        for s in range(S):
            h = self.mag_hist[s].double()
            frac = h / h.sum(-1, keepdim=True).clamp_min(1)
            z = torch.log10(frac.clamp_min(1e-7)).tolist()
            fig.add_trace(go.Heatmap(z=z, x=torch.log10(lo).tolist(), y=self.layers, colorscale=SEQUENTIAL,
                                     zmin=-7, zmax=0, showscale=s == S - 1,
                                     colorbar=dict(title="log₁₀ share")), row=1, col=s + 1)
            fig.add_trace(go.Scatter(x=torch.log10(self.tau[s].double()).tolist(), y=self.layers, mode="lines",
                                     line=dict(color="white", width=2), name="τ_l", showlegend=False),
                          row=1, col=s + 1)
            fig.update_xaxes(title="log₁₀ |x|", row=1, col=s + 1)
        fig.update_yaxes(title="layer", row=1, col=1)
        return style(fig, title="Magnitude distribution of all (token, neuron) entries per layer (white: τ_l)",
                     width=1200, height=560)

    def figure_detectors(self, n: int = 8):
        """The strongest bigram and token detectors: their top n-grams' energy shares."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ..figures import COLORS, style
        big = sorted((d for d in self.detectors if d["bigram_detector"]), key=lambda d: -d["bi_share"])[:n // 2]
        tok = sorted((d for d in self.detectors if d["token_detector"] and not d["bigram_detector"]),
                     key=lambda d: -d["uni_share"])[:n - len(big)]
        ex = big + tok
        if not ex:
            fig = go.Figure()
            fig.add_annotation(text="no token or bigram detectors under these settings", showarrow=False)
            return style(fig, title="Strongest n-gram detectors")
        cols = 2
        rows = (len(ex) + cols - 1) // cols
        titles = [f"L{d['layer']} N{d['neuron']} {'bigram' if d['bigram_detector'] else 'token'} detector · trigger at "
                  f"{d['unembed_pct']:.0%}" for d in ex]
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.22, vertical_spacing=0.1)
        for i, d in enumerate(ex):
            r, c = i // cols + 1, i % cols + 1
            grams = d["top_bigrams"] if d["bigram_detector"] else d["top_unigrams"]
            labels = [repr(g["text"]) + f" ×{g['count']}" for g in grams][::-1]
            fig.add_trace(go.Bar(x=[g["share"] for g in grams][::-1], y=labels, orientation="h", showlegend=False,
                                 marker_color=COLORS[0 if d["bigram_detector"] else 1]), row=r, col=c)
            fig.update_xaxes(range=[0, 1], row=r, col=c, title="share of energy" if r == rows else None)
        return style(fig, title="Strongest n-gram detectors: share of the neuron's energy on its top n-grams (×count)",
                     width=1200, height=230 * rows + 120)

    def figure_positional(self, n: int = 8):
        """Mean activation per position of the most positional neurons (largest η²)."""
        import plotly.graph_objects as go

        from ..figures import style
        fig = go.Figure()
        order = self.eta2.flatten().argsort(descending=True)[:n].tolist()
        N = self.eta2.shape[1]
        lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(self.profile_neurons.tolist())}
        for f in order:
            j, nn = f // N, f % N
            if (j, nn) not in lookup:
                continue
            p = self.signals.index("post")
            mu, rms = float(self.mean[p, j, nn]), float(self.rms[p, j, nn])
            sd = max((rms ** 2 - mu ** 2) ** 0.5, 1e-12)
            y = (self.profiles[lookup[(j, nn)]] - mu) / sd
            fig.add_trace(go.Scatter(x=list(range(1, len(y))), y=y[1:].tolist(), mode="lines",
                                     name=f"L{self.layers[j]} N{nn} (η² {float(self.eta2[j, nn]):.2f})"))
        fig.update_xaxes(title="position in the window")
        fig.update_yaxes(title="mean activation at the position (neuron's SDs from its mean)")
        return style(fig, title="Most positional neurons: mean activation by position (positions ≥ 1)", width=1000)

    def figure_suppress(self):
        """Where each detector's value vector ranks its own trigger token (0 = most suppressed)."""
        import plotly.graph_objects as go

        from ..figures import style
        fig = go.Figure()
        readouts = [("unembed_pct", "through the unembedding (next-token logits)"),
                    ("embed_pct", "against the input embeddings (current token)")]
        if self.params.get("tied_embeddings"):
            readouts = [("unembed_pct", "through the tied embedding matrix (next-token logits = current token)")]
        for key, lab in readouts:
            fig.add_trace(go.Histogram(x=[d[key] for d in self.detectors], xbins=dict(start=0, end=1, size=0.05),
                                       name=lab, opacity=0.75))
        fig.add_hline(y=len(self.detectors) / 20, line=dict(dash="dot", color="#555"), layer="above",
                      annotation_text="no relation (uniform)", annotation_position="top left")
        fig.update_layout(barmode="overlay", legend=dict(x=0.02, y=1.0, xanchor="left", yanchor="bottom"))
        fig.update_xaxes(title="fraction of the vocabulary scored below the trigger token", range=[0, 1])
        fig.update_yaxes(title="detectors")
        return style(fig, title=f"Detect, then suppress? {len(self.detectors)} detectors' value vectors (signed as they "
                                f"fire) on their own trigger token", width=1000)

    def figures(self) -> dict:
        """All six figures by file stem (what ``interp neurons stats`` writes)."""
        return {"neuron_types": self.figure(), "neuron_frequency": self.figure_frequency(),
                "neuron_magnitude": self.figure_magnitude(), "neuron_detectors": self.figure_detectors(),
                "neuron_positional": self.figure_positional(), "neuron_detect_suppress": self.figure_suppress()}


# ---------------------------------------------------------------------- finalize
def thresholds(bin_energy: Float[Tensor, "signal layer mag"], bin_count: Int[Tensor, "signal layer mag"], grid: Grid,
               kind: str, value: float) -> Int[Tensor, "signal layer"]:
    """Magnitude-bin index of ``τ`` per (signal, layer) under the threshold rule (module docstring).

    ``"energy"``: the largest edge whose sub-edge entries carry at most ``value`` of the layer's
    energy, where the entries at or above the bin of the layer's top :data:`ENERGY_CLIP` fraction
    count as if they sat at that bin's lower edge (massive activations cannot make every other
    entry of their layer negligible).
    """
    S, L, M = bin_energy.shape
    if kind == "abs":
        return torch.full((S, L), grid.snap(value), dtype=torch.long)
    e, c = bin_energy.cpu().double(), bin_count.cpu().double()
    edges = grid.edges()
    m = torch.arange(M).expand(S, L, -1)
    above = c.flip(-1).cumsum(-1).flip(-1)  # entries >= edge m
    mq = torch.where(above >= ENERGY_CLIP * above[..., :1], m, torch.zeros_like(m)).amax(-1, keepdim=True)
    below = torch.cat([torch.zeros(S, L, 1, dtype=e.dtype), e.cumsum(-1)[..., :-1]], -1)  # energy under edge m
    total = below.gather(-1, mq) + above.gather(-1, mq) * edges[mq] ** 2
    ok = below <= value * total
    ok[..., 0] = True
    return torch.where(ok, m, torch.zeros_like(m)).amax(-1).clamp_min(1)


def _signal_tensors(states: Sequence[PassState], signals: Sequence[str]) -> tuple[dict[str, Tensor], list[int]]:
    """Per-signal tensors stacked in ``signals`` order from the passes that hold them, and each signal's state."""
    out, owner = {}, []
    for name in signals:
        i = next(i for i, st in enumerate(states) if name in st.signals)
        owner.append(i)
        k = states[i].signals.index(name)
        for f in ("hist", "bin_energy", "sum", "sumsq", "max_abs"):
            out.setdefault(f, []).append(getattr(states[i], f)[k].cpu())
    return {f: torch.stack(v) for f, v in out.items()}, owner


def finalize(main: PassState, factors: PassState | None, *, signals: Sequence[str], n_tokens: Sequence[int],
             model: str, engine: str, layers: list[int], corpus: dict, threshold: float, threshold_kind: str,
             detector_top: int, detector_share: float, positional_eta2: float, exact: dict | None = None,
             search: dict | None = None, seconds: dict | None = None, n_profiles: int = 64) -> NeuronStats:
    """Turn the passes' states (plus exact n-gram shares) into :class:`NeuronStats`; no model needed.

    ``main`` holds ``post`` (and the positional sums and sketch), ``factors`` the gate and up
    signals of the calibration sample; ``n_tokens`` are the (main, calibration) token counts.
    ``exact`` maps ``"neurons"`` (``[cand, 2]`` layer index, neuron), ``"uni_share"``,
    ``"bi_share"`` (``[cand]``) for every traced neuron.
    """
    g = main.grid
    sig, owner = _signal_tensors([main] + ([factors] if factors is not None else []), signals)
    n = torch.tensor([max(n_tokens[o], 1) for o in owner], dtype=torch.float64)[:, None, None]
    mag = sig["hist"].long().transpose(2, 3)  # S L N mag
    m_tau = thresholds(sig["bin_energy"], mag.sum(2), g, threshold_kind, threshold)
    edges = g.edges()
    tau = edges[m_tau].float()
    above = mag.flip(-1).cumsum(-1).flip(-1)  # count ≥ edge m
    count = above.gather(-1, m_tau[..., None, None].expand(*mag.shape[:3], 1))[..., 0]
    freq = (count.double() / n).float()
    mean = (sig["sum"] / n).float()
    rms = (sig["sumsq"] / n).sqrt().float()
    p = list(signals).index("post")
    dead = count[p] == 0
    rare = freq[p] < RARE_FREQ
    st = {k: v.cpu() for k, v in main.tensors().items()}
    # positional: η² over positions >= 1
    nb = st["pos_tokens"][1:].double()
    m1 = nb.sum().clamp_min(1)
    s1, q1 = st["pos_sum"][:, 1:].transpose(1, 2), st["pos_sumsq"][:, 1:].transpose(1, 2)  # L N P-1
    mu = s1.sum(-1) / m1
    ss_tot = (q1.sum(-1) - m1 * mu ** 2).clamp_min(0)
    mb = s1 / nb.clamp_min(1)
    ss_between = (nb * (mb - mu[..., None]) ** 2 * (nb > 0)).sum(-1)
    eta2 = torch.where(ss_tot > 1e-12 * m1, ss_between / ss_tot.clamp_min(1e-300), torch.zeros_like(ss_tot))
    eta2 = eta2.clamp(0, 1).float()
    positional = (eta2 >= positional_eta2) & ~dead
    # n-gram shares: exact for traced neurons, the hashed bound elsewhere
    energy = st["pos_sumsq"][:, 1:].sum(1).float()
    uni = main.bound(detector_top).cpu().float()
    bi = uni.clone()
    exact_mask = torch.zeros_like(dead)
    if exact is not None and len(exact["neurons"]):
        jj, nn = exact["neurons"].T
        uni[jj, nn] = exact["uni_share"].float()
        bi[jj, nn] = exact["bi_share"].float()
        exact_mask[jj, nn] = True
    token_det = exact_mask & (uni >= detector_share)
    bigram_det = exact_mask & (bi >= detector_share)
    # position profiles of the most positional neurons
    flat = eta2.flatten().argsort(descending=True)[:n_profiles]
    N = eta2.shape[1]
    prof_ids = torch.stack([flat // N, flat % N], 1)
    prof = (st["pos_sum"][prof_ids[:, 0], :, prof_ids[:, 1]] / st["pos_tokens"].double().clamp_min(1)).float()
    per_layer = {"dead": dead.sum(-1).tolist(), "rare": rare.sum(-1).tolist(),
                 "token_detector": token_det.sum(-1).tolist(), "bigram_detector": bigram_det.sum(-1).tolist(),
                 "positional": positional.sum(-1).tolist()}
    for s, name in enumerate(signals):
        per_layer[f"mean_freq_{name}"] = freq[s].mean(-1).tolist()
        per_layer[f"dead_{name}"] = (count[s] == 0).sum(-1).tolist()
        per_layer[f"rare_{name}"] = (freq[s] < RARE_FREQ).sum(-1).tolist()
    params = {"detector_top": detector_top, "detector_share": detector_share, "positional_eta2": positional_eta2,
              "rare_freq": RARE_FREQ}
    thr = {"kind": threshold_kind, "value": threshold, "grid": g.to_dict()}
    sig_tokens = {name: int(n_tokens[o]) for name, o in zip(signals, owner)}
    return NeuronStats(model, engine, list(layers), list(signals), dict(corpus), thr, params, int(n_tokens[0]),
                       sig_tokens, tau, freq, sig["max_abs"].float(), mean, rms, mag.sum(2), edges.float(), energy,
                       eta2, uni, bi, exact_mask, dead, rare, token_det, bigram_det, positional, prof_ids, prof,
                       [], per_layer, search or {}, seconds or {})


# ---------------------------------------------------------------------- the pipeline
def _check_args(threshold_kind, threshold, max_len, batch_size, detector_top, detector_share, calib_every,
                save_every):
    if threshold_kind not in ("energy", "abs"):
        raise InterpError(f"threshold_kind must be 'energy' (per-layer τ: entries below carry ≤ threshold of "
                          f"the layer's energy) or 'abs' (|x| ≥ threshold), not {threshold_kind!r}")
    if threshold_kind == "energy" and not 0 < threshold < 1:
        raise InterpError(f"an energy threshold is a fraction in (0, 1), e.g. 0.01, not {threshold}")
    if threshold_kind == "abs" and not threshold > 0:
        raise InterpError(f"an absolute threshold must be > 0, not {threshold}")
    if max_len < 2 or batch_size < 1:
        raise InterpError("max_len must be at least 2 and batch_size at least 1")
    if detector_top < 1 or not 0 < detector_share <= 1:
        raise InterpError("detector_top must be ≥ 1 and detector_share in (0, 1]")
    if calib_every < 1:
        raise InterpError("calib_every must be ≥ 1 (1 = calibrate on every window)")
    if save_every < 1:
        raise InterpError(f"save_every (batches between two state snapshots) must be ≥ 1, not {save_every}")


@torch.no_grad()
def neuron_stats(model, corpus, *, layers: Sequence[int] | None = None, text_field: str | None = None,
                 max_len: int = 128, batch_size: int = 8, max_tokens: int | None = None,
                 signals: Sequence[str] | None = None, threshold: float = 0.01, threshold_kind: str = "energy",
                 detector_top: int = 3, detector_share: float = 0.5, positional_eta2: float = 0.5,
                 calib_every: int = 10, n_hashes: int = 2, n_buckets: int = 256, max_candidates: int = 4096,
                 grid: Grid = Grid(), checkpoint_dir: str | Path | None = None, save_every: int = 16,
                 main_batches: int | None = None, top_up: bool = True, max_batches: int | None = None,
                 progress: bool = False) -> NeuronStats | None:
    """Dead, rare, token/bigram-detector and positional neurons over a corpus (Voita et al. 2023).

    See the module docstring for every definition and the pipeline; :mod:`interp.neurons.ngrams`
    for the exact n-gram counting.

    Args:
        corpus: texts, a ``datasets`` dataset, a path or a list of ``Path`` (see :func:`iter_texts`).
        signals: subset of ``("gate", "up", "post")`` (default: all three for a gated MLP, ``post``
            otherwise); ``("post",)`` reads ``mlp_post`` and skips recomputing gate and up.
        threshold, threshold_kind: the activity threshold (``"energy"``: per-layer τ whose
            sub-threshold entries carry ≤ ``threshold`` of the layer's energy; ``"abs"``: ``|x| ≥
            threshold``).  Applied after the pass; :func:`finalize` can redo it.
        detector_top, detector_share: a detector's top-``k`` n-grams carry ≥ this share of its energy.
        calib_every, n_hashes, n_buckets, max_candidates: n-gram candidate search (ngrams module).
        main_batches: cut the main pass (and a top-up pass) short after this many batches, i.e. the
            first ``main_batches · batch_size`` windows in corpus order, when the whole corpus does not fit
            the time: ``post``, positions and n-grams then cover those tokens (``corpus["main_tokens"]``),
            gate and up still the calibration sample of the whole corpus.  Not part of the checkpoint's
            settings: a cut run continues with a larger cut or none.
        top_up: run the top-up pass (a full pass over the main batches, however few neurons it traces);
            False leaves the neurons only it could resolve unresolved (``search["n_unresolved"]``; they are
            not counted as detectors).
        checkpoint_dir: resumable state (one subdirectory per pass); without it the traces go to a
            temporary directory.  max_batches: stop after this many batches in this call (state saved at
            the last snapshot) and return None; call again to continue.

    Returns:
        :class:`NeuronStats`, or None when ``max_batches`` stopped the run early.
    """
    _check_args(threshold_kind, threshold, max_len, batch_size, detector_top, detector_share, calib_every,
                save_every)
    if main_batches is not None and main_batches < 1:
        raise InterpError(f"main_batches must be ≥ 1 (or None for the whole corpus), not {main_batches}")
    a = model.adapter
    lay = list(range(a.n_layers)) if layers is None else [a.check_layer(l) for l in layers]
    gated = a.gate is not None
    sig = list(signals) if signals is not None else (list(SIGNALS) if gated else ["post"])
    bad = [s for s in sig if s not in SIGNALS or (s != "post" and not gated)]
    if bad or "post" not in sig:
        raise InterpError(f"signals must include 'post' and be among {SIGNALS if gated else ('post',)} for this "
                          f"{a.model_type} model, not {sig}")
    sig = [s for s in SIGNALS if s in sig]
    factors = [s for s in sig if s != "post"]
    wins, info = corpus_windows(model.tokenizer, corpus, text_field=text_field, max_len=max_len,
                                max_tokens=max_tokens)
    dev = model.device
    L, N = len(lay), a.d_mlp
    root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    base = {"model": model.name, "layers": lay, "corpus_sha256": info["sha256"], "n_tokens": info["n_tokens"],
            "max_len": max_len, "batch_size": batch_size, "n_hashes": n_hashes, "n_buckets": n_buckets,
            "grid": grid.to_dict(), "save_every": save_every}
    budget = [max_batches]
    seconds = {}

    # ------------------------------------------------------------ 1. calibration: candidates, gate and up
    calib = PassState(L, N, signals=factors, grid=grid, n_hashes=n_hashes, n_buckets=n_buckets, device=dev)
    calib_wins = wins[::calib_every]
    calib_pass = _Pass("calib", root, {**base, "calib_every": calib_every, "signals": factors}, calib, save_every)
    step = _make_step(model, lay, calib, "resid_mid" if factors else "mlp_post")
    if not calib_pass.run(_batches(calib_wins, batch_size), step, budget, progress):
        return None
    seconds["calibration"] = calib_pass.progress["seconds"]
    cands = ngrams.pick_candidates(calib.bound(detector_top).cpu(), detector_share / 2, max_candidates)

    # ------------------------------------------------------------ 2. main pass: post, positions, traces
    main = PassState(L, N, signals=["post"], grid=grid, max_len=max_len, n_hashes=n_hashes, n_buckets=n_buckets,
                     device=dev)
    digest = hashlib.sha256(cands.numpy().tobytes()).hexdigest()[:16]
    main_pass = _Pass("main", root, {**base, "candidates": digest, "n_candidates": len(cands)}, main, save_every)
    step = _make_step(model, lay, main, "mlp_post", cands)
    main_b = _batches(wins, batch_size)[:main_batches]
    info["main_windows"], info["main_tokens"] = sum(map(len, main_b)), sum(len(w) for b in main_b for w in b)
    if not main_pass.run(main_b, step, budget, progress):
        return None
    seconds["main"] = main_pass.progress["seconds"]

    # ------------------------------------------------------------ 3. verification and top-up
    bound = main.bound(detector_top).cpu()
    if len(cands):
        bound[cands[:, 0], cands[:, 1]] = 0.0
    missed_all = ngrams.pick_candidates(bound, detector_share, L * N)
    missed = missed_all[:max_candidates] if top_up else missed_all[:0]
    traced = [(main_pass, cands)]
    if len(missed):
        top_pass = _Pass("topup", root, {**base, "missed": hashlib.sha256(missed.numpy().tobytes()).hexdigest()[:16]},
                         PassState(L, N), save_every)
        step = _make_step(model, lay, PassState(L, N), "mlp_post", missed)
        if not top_pass.run(main_b, step, budget, progress):
            return None
        seconds["topup"] = top_pass.progress["seconds"]
        traced.append((top_pass, missed))

    # ------------------------------------------------------------ 4. exact n-gram counts, detectors
    t0 = time.perf_counter()
    neurons, rows = [], []
    for ps, nrn in traced:
        if len(nrn):
            neurons.append(nrn)
            rows.append(ngrams.exact_ngram_energies(ps.shards, len(nrn), a.vocab_size, detector_top))
    exact = None
    if neurons:
        r = {k: torch.cat([x[k] for x in rows]) for k in rows[0]}
        e = r["energy"].clamp_min(1e-300)
        exact = {"neurons": torch.cat(neurons), "uni_share": r["uni_energy"].sum(1) / e,
                 "bi_share": r["bi_energy"].sum(1) / e, "rows": r}
    search = {"calib_windows": len(calib_wins), "candidate_cut": detector_share / 2, "n_candidates": len(cands),
              "n_missed": len(missed_all), "n_topup": len(missed), "n_unresolved": len(missed_all) - len(missed),
              "max_candidates": max_candidates, "n_hashes": n_hashes, "n_buckets": n_buckets}
    res = finalize(main, calib if factors else None, signals=sig,
                   n_tokens=[info["main_tokens"], sum(map(len, calib_wins))], model=model.name,
                   engine=model.engine_name, layers=lay, corpus=info, threshold=threshold,
                   threshold_kind=threshold_kind, detector_top=detector_top, detector_share=detector_share,
                   positional_eta2=positional_eta2, exact=exact, search=search)
    if exact is not None:
        res.detectors = _describe_detectors(model, res, exact, lay)
    res.params["tied_embeddings"] = a.W_E.data_ptr() == a.W_U.data_ptr()
    seconds["ngrams"] = time.perf_counter() - t0
    res.seconds = seconds
    return res


def _make_step(model, lay: list[int], state: PassState, reads: str, traced: Tensor | None = None) -> Callable:
    """The per-batch work of a pass: one forward, then every layer folded into ``state``.

    ``reads="resid_mid"`` recomputes gate and up with the model's own modules (their product is
    ``mlp_post`` bit for bit); ``traced`` (``[cand, 2]``) are the neurons whose ``post`` goes to
    the trace shards.  Only the layers that something needs are read.
    """
    from .clamp import _ids_batch
    a, dev = model.adapter, model.device
    N = a.d_mlp
    cols = [traced[traced[:, 0] == j, 1].to(dev) for j in range(len(lay))] if traced is not None else None
    needs_all = bool(state.signals) or hasattr(state, "sketch") or hasattr(state, "pos_sum")
    read_layers = [l for j, l in enumerate(lay) if needs_all or (cols is not None and len(cols[j]))]

    def step(wins):
        b = _ids_batch(model.tokenizer, wins)
        out = model.run(b, reads=reads, layers=read_layers, logits="none", max_rows=len(wins), cache_device=None)
        mask = b.attention_mask.bool().to(dev)
        full = bool(mask.all())
        groups = _pad_groups(b)
        ids, prev, pos = _flat_ids(wins, dev)
        keep = pos > 0
        hb = state.buckets(ids, pos) if hasattr(state, "sketch") else None
        traces = []
        for j, l in enumerate(lay):
            if l not in read_layers:
                continue
            if reads == "resid_mid":
                g, u = a.mlp_gate_up(l, out.cache["resid_mid", l])
                vals = {"gate": torch.relu(g), "up": u, "post": g * u}  # gate: how far it is open
            else:
                vals = {"post": out.cache["mlp_post", l]}
            for name, v in vals.items():
                x3 = v.float()
                xx3 = x3 * x3
                x, xx = (x3.reshape(-1, N), xx3.reshape(-1, N)) if full else (x3[mask], xx3[mask])
                if name in state.signals:
                    state.add_signal(state.signals.index(name), j, x, xx)
                if name != "post":
                    continue
                if hasattr(state, "pos_sum"):
                    state.add_positions(j, x3, xx3, groups)
                if hb is not None:
                    state.add_sketch(j, xx, hb)
                if cols is not None and len(cols[j]):
                    traces.append(x[:, cols[j]][keep])
        return (torch.cat(traces, 1), ids[keep], prev[keep]) if traces else None

    return step


def _describe_detectors(model, res: NeuronStats, exact: dict, lay: list[int]) -> list[dict]:
    """One JSON entry per token or bigram detector: n-grams, sign, value-vector readout."""
    r = exact["rows"]
    jj, nn = exact["neurons"].T
    is_det = (res.token_detector[jj, nn] | res.bigram_detector[jj, nn]).nonzero().flatten()
    if not len(is_det):
        return []
    tok = model.tokenizer

    def text(i):
        return tok.decode([int(i)])

    signs = torch.sign(r["trigger_sum"][is_det]).where(r["trigger_sum"][is_det] != 0, torch.ones(1, dtype=torch.float64))
    readout = ngrams.detect_then_suppress(model.adapter, lay, exact["neurons"][is_det], r["uni_ids"][is_det, 0], signs)
    out = []
    p = res.signals.index("post")
    for i, c in enumerate(is_det.tolist()):
        j, n = int(jj[c]), int(nn[c])
        e = float(r["energy"][c])
        out.append({
            "layer": lay[j], "neuron": n, "uni_share": round(float(exact["uni_share"][c]), 4),
            "bi_share": round(float(exact["bi_share"][c]), 4), "token_detector": bool(res.token_detector[j, n]),
            "bigram_detector": bool(res.bigram_detector[j, n]), "freq": round(float(res.freq[p, j, n]), 5),
            "sign": int(signs[i]),
            "top_unigrams": [{"id": int(u), "text": text(u), "share": round(float(ue) / e, 4), "count": int(cnt)}
                             for u, ue, cnt in zip(r["uni_ids"][c], r["uni_energy"][c], r["uni_count"][c])],
            "top_bigrams": [{"ids": [int(pv), int(cu)], "text": text(pv) + text(cu), "share": round(float(be) / e, 4),
                             "count": int(cnt)}
                            for (pv, cu), be, cnt in zip(r["bi_ids"][c], r["bi_energy"][c], r["bi_count"][c])],
            "trigger": text(r["uni_ids"][c, 0]), "unembed_pct": round(float(readout["unembed_pct"][i]), 5),
            "embed_pct": round(float(readout["embed_pct"][i]), 5),
            "unembed_z": round(float(readout["unembed_z"][i]), 3),
            "promoted": [text(t) for t in readout["promoted"][i]],
            "suppressed": [text(t) for t in readout["suppressed"][i]]})
    return out
