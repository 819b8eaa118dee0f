"""Neuron statistics over a corpus, streamed in fixed memory (Voita et al. 2023).

Per MLP neuron (``mlp_post``, the input of the down-projection) the corpus pass keeps only
running sums, whose size does not depend on the corpus:

* activity counts — a neuron is *active* on a token when ``|a| > threshold`` (``mode="abs"``,
  default) or ``a > threshold`` (``mode="pos"``).  Gated (SwiGLU) activations are not ReLU: they
  are rarely exactly 0 and may be negative, so "never active" only means something with an
  explicit threshold, which is stored with the result.  → activation frequency, **dead** neurons
  (no active token in the whole corpus);
* activity per token-id bucket (``n_buckets`` hash buckets of the vocabulary, plus the smallest and
  largest id active in each bucket) → **token detectors**: neurons whose
  activity is concentrated on a few tokens (the top ``detector_top`` buckets hold at least
  ``detector_share`` of their active tokens).  Hashing can only merge tokens, so the share is an
  upper bound of the exact per-token share; when the smallest and largest id active in the top
  bucket are equal it held a single token, which is then named exactly;
* per-position-bin sums of ``a`` and ``a²`` and active counts → **position dependence**:
  ``eta²`` (the share of activation variance explained by the position bin, the correlation
  ratio), Pearson correlation with the position, and the mutual information between
  "active" and the position bin.  Position 0 has its own bin and is left out of these three:
  the first token of every window is an attention-sink outlier in most models and would make
  every neuron look positional.  A neuron is **positional** when ``eta² ≥ positional_eta2``.

Texts are cut into windows of ``max_len`` tokens (positions restart at 0 in each window),
batched, and run once with ``reads=mlp_post`` for all layers.  Memory: the per-batch activations
(``layers × batch × max_len × d_mlp``) plus the state (≈ 45 MB for the default model).

Resumable: with ``checkpoint_dir`` the state is snapshotted every ``save_every`` batches through
the sweep log (:meth:`interp.sweep.Checkpoint.save_state`: tensors and batch count in one
record, so a kill cannot pair them wrongly); a rerun with the same settings continues after the
last snapshot, a rerun with other settings is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import DatasetError, InterpError
from ..results import Result

TEXT_FIELDS = ("text", "wikipedia_content", "content", "document", "passage")


# ---------------------------------------------------------------------- corpus
def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
                           f"fix or replace the file") from None


def iter_texts(corpus, text_field: str | None = None) -> Iterator[str]:
    """Texts of a corpus: a list of strings, a ``datasets`` dataset, or a path.

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
        field = text_field or next((k for k in TEXT_FIELDS if k in corpus.column_names), None)
        if field is None:
            raise DatasetError(f"dataset has no text column ({', '.join(corpus.column_names)}); pass text_field=")
        for rec in corpus:
            yield rec[field]
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


# ---------------------------------------------------------------------- running state
_HASH = 2654435761  # Knuth's multiplicative hash


def token_bucket(ids: Tensor, n_buckets: int) -> Tensor:
    return (ids.long() * _HASH) % (2 ** 32) % n_buckets


class RunningNeuronStats:
    """Fixed-size sufficient statistics; :meth:`update` with one batch of activations.

    Per-bin tensors are laid out ``[layer, bin, neuron]`` so one batch is folded in with
    one-hot matmuls over its tokens.
    """

    NAMES = ("count", "count_bin", "sum_bin", "sumsq_bin", "sum_ap", "bucket_count", "bucket_idmin",
             "bucket_idmax", "max_abs", "tokens_bin", "pos_sums")

    def __init__(self, n_layers, d_mlp, *, n_pos_bins, max_len, n_buckets, threshold, mode):
        L, N, P, B = n_layers, d_mlp, n_pos_bins, n_buckets
        f64 = torch.float64
        self.P, self.B, self.max_len, self.threshold, self.mode = P, B, max_len, threshold, mode
        self.count = torch.zeros(L, N, dtype=f64)
        self.count_bin = torch.zeros(L, P, N, dtype=f64)
        self.sum_bin = torch.zeros(L, P, N, dtype=f64)
        self.sumsq_bin = torch.zeros(L, P, N, dtype=f64)
        self.sum_ap = torch.zeros(L, N, dtype=f64)  # positions >= 1
        self.bucket_count = torch.zeros(L, B, N, dtype=torch.float32)
        self.bucket_idmin = torch.full((L, B, N), 2 ** 31 - 1, dtype=torch.int32)
        self.bucket_idmax = torch.full((L, B, N), -1, dtype=torch.int32)
        self.max_abs = torch.zeros(L, N, dtype=torch.float32)
        self.tokens_bin = torch.zeros(P, dtype=f64)
        self.pos_sums = torch.zeros(2, dtype=f64)  # sum p, sum p^2 over positions >= 1
        self.n_windows = 0

    def pos_bin(self, pos: Tensor) -> Tensor:
        width = max(1, math.ceil((self.max_len - 1) / (self.P - 1)))
        return torch.where(pos == 0, 0, 1 + (pos - 1) // width).clamp(max=self.P - 1)

    def update(self, acts: Float[Tensor, "layer tok d_mlp"], pos: Int[Tensor, "tok"], ids: Int[Tensor, "tok"]):
        pb = self.pos_bin(pos)
        bk = token_bucket(ids, self.B)
        p = pos.double()
        p1 = p * (pos > 0)
        N = acts.shape[-1]
        # one-hot matmuls fold a batch into bins (BLAS; index_add_ over rows is serial on CPU)
        oh_p = torch.nn.functional.one_hot(pb, self.P).T.float()  # P tok
        oh_b = torch.nn.functional.one_hot(bk, self.B).T.float()  # B tok
        bk_full = bk[:, None].expand(-1, N)
        ids32 = ids.int()[:, None]
        big = torch.full_like(ids32, 2 ** 31 - 1)
        for l in range(acts.shape[0]):
            x = acts[l].float()
            active = (x.abs() > self.threshold) if self.mode == "abs" else (x > self.threshold)
            af = active.float()
            # per-batch sums in float32 (≤ a few thousand terms), accumulated in float64
            y = torch.cat([af, x, x * x], 1)
            binned = (oh_p @ y).double()  # P 3N
            self.count_bin[l] += binned[:, :N]
            self.sum_bin[l] += binned[:, N:2 * N]
            self.sumsq_bin[l] += binned[:, 2 * N:]
            self.count[l] += binned[:, :N].sum(0)
            self.sum_ap[l] += (p1.float() @ x).double()
            self.bucket_count[l] += oh_b @ af
            self.bucket_idmin[l].scatter_reduce_(0, bk_full, torch.where(active, ids32, big), "amin")
            self.bucket_idmax[l].scatter_reduce_(0, bk_full, torch.where(active, ids32, -1), "amax")
            self.max_abs[l] = torch.maximum(self.max_abs[l], x.abs().amax(0))
        self.tokens_bin.index_add_(0, pb, torch.ones_like(p))
        pp = p[pos > 0]
        self.pos_sums += torch.stack([pp.sum(), (pp * pp).sum()])

    def state(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.NAMES}

    def load_state(self, st: dict[str, Tensor]) -> None:
        for k in self.NAMES:
            getattr(self, k).copy_(st[k])


# ---------------------------------------------------------------------- result
@dataclass
class NeuronStats(Result):
    """Per-neuron corpus statistics; tensors are ``[layer, neuron]`` (``[layer, neuron, pos_bin]``)."""

    stem = "neuron_stats"
    tensor_fields = ("freq", "max_abs", "mean", "std", "pos_eta2", "pos_corr", "pos_mi", "detector_share",
                     "detector_token", "freq_by_pos", "dead", "token_detector", "positional")
    json_tensors = False

    model: str
    layers: list[int]
    threshold: float
    mode: str
    n_tokens: int
    n_windows: int
    max_len: int
    n_pos_bins: int
    n_buckets: int
    detector_top: int
    detector_share_min: float
    min_active: int
    positional_eta2: float
    freq: Float[Tensor, "layer neuron"]
    max_abs: Float[Tensor, "layer neuron"]
    mean: Float[Tensor, "layer neuron"]
    std: Float[Tensor, "layer neuron"]
    pos_eta2: Float[Tensor, "layer neuron"]
    pos_corr: Float[Tensor, "layer neuron"]
    pos_mi: Float[Tensor, "layer neuron"]
    detector_share: Float[Tensor, "layer neuron"]
    detector_token: Int[Tensor, "layer neuron"]
    freq_by_pos: Float[Tensor, "layer neuron pos_bin"]
    dead: Tensor
    token_detector: Tensor
    positional: Tensor
    #: per-layer fractions: {"dead": [...], "token_detector": [...], "positional": [...], "mean_freq": [...]}
    per_layer: dict | None = None
    engine: str = "hf"

    def figure(self):
        import plotly.graph_objects as go

        from ..figures import style
        fig = go.Figure()
        names = {"dead": "dead (never active)", "token_detector": f"token detector (top-{self.detector_top} "
                 f"tokens ≥ {self.detector_share_min:.0%} of activity)",
                 "positional": f"positional (η² ≥ {self.positional_eta2})", "mean_freq": "mean activation frequency"}
        for k, lab in names.items():
            fig.add_trace(go.Scatter(x=self.layers, y=self.per_layer[k], mode="lines+markers", name=lab))
        fig.update_xaxes(title="layer")
        fig.update_yaxes(title="fraction of the layer's neurons", range=[0, 1.02])
        return style(fig, title=f"Neuron types per layer — {self.model} ({self.n_tokens:,} tokens, "
                                f"active = {'|a|' if self.mode == 'abs' else 'a'} > {self.threshold})", width=1000)


def finalize(rs: RunningNeuronStats, *, model: str, layers: list[int], n_tokens: int, detector_top: int,
             detector_share: float, min_active: int, positional_eta2: float, engine: str) -> NeuronStats:
    eps = 1e-12
    n = max(n_tokens, 1)
    count = rs.count
    freq = (count / n).float()
    sum_bin, sumsq_bin = rs.sum_bin.transpose(1, 2), rs.sumsq_bin.transpose(1, 2)  # L N P
    count_bin = rs.count_bin.transpose(1, 2)
    tot_sum = sum_bin.sum(-1)
    tot_sq = sumsq_bin.sum(-1)
    mean = tot_sum / n
    std = (tot_sq / n - mean ** 2).clamp_min(0).sqrt()
    # position statistics over positions >= 1 (bins 1..P-1)
    nb = rs.tokens_bin[1:]
    m1 = nb.sum().clamp_min(1)
    s1, q1 = sum_bin[..., 1:], sumsq_bin[..., 1:]
    mu = s1.sum(-1) / m1
    ss_tot = (q1.sum(-1) - m1 * mu ** 2).clamp_min(0)
    mb = s1 / nb.clamp_min(1)
    ss_between = (nb * (mb - mu[..., None]) ** 2 * (nb > 0)).sum(-1)
    eta2 = torch.where(ss_tot > eps, ss_between / ss_tot.clamp_min(eps), torch.zeros_like(ss_tot)).clamp(0, 1)
    sp, spp = rs.pos_sums
    cov = rs.sum_ap / m1 - mu * (sp / m1)
    var_p = (spp / m1 - (sp / m1) ** 2).clamp_min(0)
    var_a = ss_tot / m1
    corr = torch.where(var_a > eps, cov / (var_a * var_p).clamp_min(eps).sqrt(), torch.zeros_like(cov))
    # MI(active; position bin), bits
    c1 = count_bin[..., 1:]
    pa = c1.sum(-1) / m1  # P(active)
    pbin = nb / m1
    mi = torch.zeros_like(pa)
    for on in (True, False):
        joint = (c1 if on else (nb - c1)) / m1  # P(active=on, bin)
        marg = pa if on else (1 - pa)
        term = joint * torch.log2(joint.clamp_min(eps) / (marg[..., None] * pbin).clamp_min(eps))
        mi += torch.where(joint > 0, term, torch.zeros_like(term)).sum(-1)
    # token detectors from hashed buckets
    bc = rs.bucket_count.transpose(1, 2).double()  # L N B
    topb, topi = bc.topk(min(detector_top, rs.B), -1)
    share = torch.where(count > 0, topb.sum(-1) / count.clamp_min(1), torch.zeros_like(count))
    first = topi[..., :1]
    idmin = rs.bucket_idmin.transpose(1, 2).gather(-1, first)[..., 0]
    idmax = rs.bucket_idmax.transpose(1, 2).gather(-1, first)[..., 0]
    pure = (topb[..., 0] > 0) & (idmin == idmax)
    det_token = torch.where(pure, idmax, torch.full_like(idmax, -1)).long()
    dead = count == 0
    detector = (count >= min_active) & (share >= detector_share)
    positional = (eta2 >= positional_eta2) & ~dead
    freq_by_pos = (count_bin / rs.tokens_bin.clamp_min(1)).float()
    per_layer = {"dead": dead.float().mean(-1).tolist(), "token_detector": detector.float().mean(-1).tolist(),
                 "positional": positional.float().mean(-1).tolist(), "mean_freq": freq.mean(-1).tolist()}
    return NeuronStats(model, layers, float(rs.threshold), rs.mode, int(n_tokens), int(rs.n_windows), rs.max_len,
                       rs.P, rs.B, detector_top, detector_share, min_active, positional_eta2, freq,
                       rs.max_abs.clone(), mean.float(), std.float(), eta2.float(), corr.float(), mi.float(),
                       share.float(), det_token, freq_by_pos, dead, detector, positional, per_layer, engine)


def neuron_stats(model, corpus, *, threshold: float = 0.1, mode: str = "abs", layers: Sequence[int] | None = None,
                 text_field: str | None = None, max_len: int = 128, batch_size: int = 8,
                 max_tokens: int | None = None, n_pos_bins: int = 16, n_buckets: int = 64,
                 detector_top: int = 3, detector_share: float = 0.9, min_active: int = 10,
                 positional_eta2: float = 0.5, checkpoint_dir: str | Path | None = None, save_every: int = 10,
                 max_batches: int | None = None, progress: bool = False) -> NeuronStats:
    """Activation frequency, dead neurons, token detectors and positional neurons over a corpus.

    Follows Voita et al. 2023 ("Neurons in LLMs: dead, n-gram, positional"), with an explicit
    activity threshold because gated activations are not ReLU (see the module docstring).

    Args:
        corpus: list of texts, a ``datasets`` dataset, or a path (see :func:`iter_texts`).
        threshold, mode: active ⇔ ``|a| > threshold`` (``"abs"``) or ``a > threshold`` (``"pos"``).
        max_len: tokens per window; batch_size: windows per forward; max_tokens: stop after this many.
        checkpoint_dir: save the running state there every ``save_every`` batches and resume from it.
        max_batches: stop after this many batches *in this call* (the state is saved; for tests
            and time-boxed runs).

    Returns:
        :class:`NeuronStats` (tensors ``[layer, neuron]``; ``per_layer`` fractions).
    """
    if mode not in ("abs", "pos"):
        raise InterpError(f"mode must be 'abs' (|a| > threshold) or 'pos' (a > threshold), not {mode!r}")
    if max_len < 2 or n_pos_bins < 2:
        raise InterpError("max_len and n_pos_bins must be at least 2")
    a = model.adapter
    lay = list(range(a.n_layers)) if layers is None else [a.check_layer(l) for l in layers]
    texts = iter_texts(corpus, text_field)
    windows = iter_windows(model.tokenizer, texts, max_len, max_tokens=max_tokens)
    first = next(windows, None)
    if first is None:
        raise DatasetError("the corpus is empty: no text with at least 4 tokens; give a list of texts, a "
                           "datasets dataset or a file with text (e.g. ConceptVectors' wikipedia_content)")
    import itertools
    windows = itertools.chain([first], windows)
    rs = RunningNeuronStats(len(lay), a.d_mlp, n_pos_bins=min(n_pos_bins, max_len), max_len=max_len,
                            n_buckets=n_buckets, threshold=threshold, mode=mode)
    n_tokens = 0
    done_batches = 0
    ck = None
    if checkpoint_dir is not None:
        from ..sweep import Checkpoint
        cfg = {"model": model.name, "layers": lay, "threshold": threshold, "mode": mode, "max_len": max_len,
               "batch_size": batch_size, "max_tokens": max_tokens, "n_pos_bins": n_pos_bins, "n_buckets": n_buckets,
               "text_field": text_field, "corpus": str(corpus) if isinstance(corpus, (str, Path)) else "in-memory"}
        ck = Checkpoint(checkpoint_dir, cfg)  # refuses a directory made with other settings
        saved = ck.load_state()
        old_st, old_meta = Path(checkpoint_dir) / "state.safetensors", Path(checkpoint_dir) / "state.json"
        if saved is None and old_st.exists() and old_meta.exists():  # written by interp before the sweep log
            from safetensors.torch import load_file
            saved = load_file(str(old_st)), json.loads(old_meta.read_text())
        if saved is not None:
            tensors, meta = saved
            rs.load_state(tensors)
            rs.n_windows, n_tokens, done_batches = meta["n_windows"], meta["n_tokens"], meta["batches"]

    def save_state():
        # tensors and progress in one snapshot: a kill can never pair new sums with an old batch count
        if ck is not None:
            ck.save_state(rs.state(), {"n_windows": rs.n_windows, "n_tokens": n_tokens, "batches": done_batches})

    from .clamp import _ids_batch

    def batches():
        buf = []
        for w in windows:
            buf.append(w)
            if len(buf) == batch_size:
                yield buf
                buf = []
        if buf:
            yield buf

    it = enumerate(batches())
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="neuron stats", unit="batch")
    ran = 0
    finished = True
    for bi, wins in it:
        if bi < done_batches:
            continue
        if max_batches is not None and ran >= max_batches:
            finished = False
            break
        b = _ids_batch(model.tokenizer, wins)
        out = model.run(b, reads="mlp_post", layers=lay, logits="none", positions=None, max_rows=batch_size)
        acts = out.cache.stack("mlp_post")  # L B W N
        mask = b.attention_mask.bool()
        pos = (b.position_ids)[mask]
        ids = b.input_ids[mask]
        rs.update(acts[:, mask], pos, ids)
        rs.n_windows += len(wins)
        n_tokens += int(mask.sum())
        done_batches = bi + 1
        ran += 1
        if ck is not None and done_batches % save_every == 0:
            save_state()
    save_state()
    res = finalize(rs, model=model.name, layers=lay, n_tokens=n_tokens, detector_top=detector_top,
                   detector_share=detector_share, min_active=min_active, positional_eta2=positional_eta2,
                   engine=model.engine_name)
    res.complete = finished  # type: ignore[attr-defined]
    return res
