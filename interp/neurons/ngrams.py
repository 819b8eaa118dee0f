"""Exact token and n-gram detectors over a corpus, and what their value vectors do (Voita et al. 2023).

Voita et al. call a ReLU neuron a token (n-gram) detector when a few tokens (n-grams) account for
nearly all the cases in which it fires, and find that such neurons' output rows are most
*negative* on their own trigger tokens: they detect a token, then remove it from the residual
stream.  A gated (SwiGLU) neuron is never exactly off, so here a neuron's *activation mass* is its
output energy ``Σ_t a_t²`` (it writes ``a_t · w_out`` into the residual stream, so ``a_t²`` is what
it writes, up to the constant ``‖w_out‖²``); near-zero activations weigh almost nothing, and no
threshold is needed.  The **unigram share** of neuron ``n`` is the energy on its top-``k`` current
tokens over its total energy; the **bigram share** the same for (previous token, current token)
pairs.  On a ReLU model a neuron's energy lives on its active tokens only, so these are the
energy-weighted version of Voita's counts.

Exact counting in fixed memory, with one full pass plus a 10% calibration sample.  A dense ``[token, neuron]`` table
for the default model on its corpus is 23K tokens × 46K neurons (4 GB), a bigram table 7× that
(159K distinct bigrams).  Instead:

1. **Upper bound by hashing.**  Every neuron's energy is also summed into ``B`` buckets of the
   token id under ``H`` hash functions (``[H·B, neuron]`` per layer).  Hashing only merges tokens,
   so the top-``k`` buckets hold at least the top-``k`` tokens' energy: ``min_h top_k(bucket_h) / E``
   is an upper bound of the unigram share, and a bigram's energy is at most its current token's,
   so it bounds the bigram share too.  A neuron whose bound is below the detector cut is provably
   not a detector.
2. **Candidates first.**  The bound is computed on a calibration sample (every ``calib_every``-th
   window, spread over the corpus so that topic words of every text are seen), and neurons whose
   sample bound reaches half the cut become candidates.
3. **Traces.**  In the main pass, the candidates' activations are written to trace shards
   (``[candidate, token]`` float32, with the token and previous-token ids); afterwards exact
   unigram and bigram energies come from ``index_add_`` over those traces, candidate chunk by
   chunk, with no hashing at all.  Traces cost ``4 · candidates · tokens`` bytes of disk (GBs for
   thousands of candidates on 362K tokens), no memory.
4. **Verification.**  The main pass also keeps the hashed bound over the whole corpus.  Any neuron
   whose full-corpus bound reaches the cut but was not a candidate (or fell beyond
   ``max_candidates``) gets a top-up pass (traces for those neurons only); the result records how
   many there were.  So every neuron is classified
   exactly: by its exact share, or by a bound below the cut.

The value-vector readout (:func:`detect_then_suppress`) projects ``sign · w_out`` (the direction a
detector actually writes when its trigger is present) through the unembedding and, for Voita's
current-token removal, through the input embeddings (the same matrix when the model ties them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: multipliers of the hash functions (odd 32-bit constants: Knuth, Murmur3, xxHash)
_HASH_MULT = (2654435761, 2246822519, 3266489917, 668265263)


def hash_buckets(ids: Int[Tensor, "tok"], n_hashes: int, n_buckets: int) -> Int[Tensor, "hash tok"]:
    """Bucket of each token id under each hash function, offset so that hash ``h`` owns rows
    ``[h·B, (h+1)·B)`` of a ``[H·B, neuron]`` sketch."""
    ids = ids.long()
    rows = [((ids * _HASH_MULT[h] + h) % (2 ** 32)) % n_buckets + h * n_buckets for h in range(n_hashes)]
    return torch.stack(rows)


def share_upper_bound(sketch: Float[Tensor, "layer hb neuron"], energy: Float[Tensor, "layer neuron"],
                      n_hashes: int, k: int) -> Float[Tensor, "layer neuron"]:
    """Upper bound of every neuron's top-``k`` unigram (and bigram) energy share (see module doc)."""
    L, HB, N = sketch.shape
    per_hash = sketch.reshape(L, n_hashes, HB // n_hashes, N).double()
    top = per_hash.topk(min(k, HB // n_hashes), dim=2).values.sum(2)  # L H N
    bound = top.amin(1) / energy.double().clamp_min(1e-300)
    # float32 bucket sums may round below the exact sum by a few ulps: widen the bound slightly
    return torch.where(energy > 0, bound * (1 + 1e-5), torch.zeros_like(bound)).clamp(max=1.0)


def pick_candidates(bound: Float[Tensor, "layer neuron"], cut: float, limit: int) -> Int[Tensor, "cand 2"]:
    """``(layer index, neuron)`` of the neurons whose bound reaches ``cut``, largest first, at most ``limit``."""
    flat = bound.flatten()
    idx = (flat >= cut).nonzero().flatten()
    idx = idx[flat[idx].argsort(descending=True, stable=True)][:limit]
    idx = idx.sort().values  # layer-major order: one gather per layer in the pass
    N = bound.shape[1]
    return torch.stack([idx // N, idx % N], 1)


# ---------------------------------------------------------------------- trace shards
def write_trace(path: Path, trace: Float[Tensor, "cand tok"], ids: Int[Tensor, "tok"],
                prev: Int[Tensor, "tok"]) -> None:
    """One trace shard, written atomically (temporary file, then rename)."""
    from safetensors.torch import save_file
    tmp = path.with_name(path.name + ".tmp")
    save_file({"trace": trace.float().contiguous(), "ids": ids.int().contiguous(),
               "prev": prev.int().contiguous()}, str(tmp))
    tmp.replace(path)


def _read(path: Path, rows: slice | None = None) -> dict[str, Tensor]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        out = {"ids": f.get_tensor("ids").long(), "prev": f.get_tensor("prev").long()}
        out["trace"] = f.get_slice("trace")[rows] if rows is not None else f.get_tensor("trace")
    return out


def exact_ngram_energies(shards: Sequence[Path], n_cand: int, vocab: int, k: int, *, chunk: int = 128
                         ) -> dict[str, Tensor]:
    """Exact top-``k`` unigram and bigram energies of every traced neuron.

    Returns (``cand`` = row of the traces): ``energy [cand]``, ``uni_ids [cand, k]``,
    ``uni_energy [cand, k]``, ``bi_ids [cand, k, 2]`` (previous, current; previous is -1 at a
    window's first token), ``bi_energy [cand, k]``, ``trigger_sum [cand]`` (sum of the activation
    over the occurrences of the top unigram: its sign is the sign the neuron fires with) and
    ``uni_count [cand, k]`` / ``bi_count [cand, k]`` (corpus occurrences of those n-grams).
    """
    meta = [_read(p, slice(0, 0)) for p in shards]
    ids_all = torch.cat([m["ids"] for m in meta])
    prev_all = torch.cat([m["prev"] for m in meta])
    # only the unigrams and bigrams that occur: [n_uni, cand] and [n_bi, cand] tables per chunk
    uni_keys, uni_inv, uni_count = torch.unique(ids_all, return_inverse=True, return_counts=True)
    bi_keys, bi_inv, bi_count = torch.unique((prev_all + 1) * (vocab + 1) + ids_all, return_inverse=True,
                                             return_counts=True)
    n_uni, n_bi = len(uni_keys), len(bi_keys)
    bounds = torch.tensor([0] + [len(m["ids"]) for m in meta]).cumsum(0).tolist()
    out: dict[str, list] = {name: [] for name in ("energy", "uni_ids", "uni_energy", "bi_ids", "bi_energy",
                                                  "trigger_sum", "uni_count", "bi_count")}
    for c0 in range(0, n_cand, chunk):
        c1 = min(n_cand, c0 + chunk)
        uni = torch.zeros(n_uni, c1 - c0, dtype=torch.float64)
        bi = torch.zeros(n_bi, c1 - c0, dtype=torch.float64)
        lin = torch.zeros(n_uni, c1 - c0, dtype=torch.float64)
        for s, path in enumerate(shards):
            tr = _read(path, slice(c0, c1))["trace"].double().T  # tok cand
            rows = slice(bounds[s], bounds[s + 1])
            uni.index_add_(0, uni_inv[rows], tr * tr)
            bi.index_add_(0, bi_inv[rows], tr * tr)
            lin.index_add_(0, uni_inv[rows], tr)
        ue, ui = uni.topk(min(k, n_uni), 0)
        be, bi_i = bi.topk(min(k, n_bi), 0)
        key = bi_keys[bi_i]
        out["energy"].append(uni.sum(0))
        out["uni_ids"].append(uni_keys[ui].T)
        out["uni_energy"].append(ue.T)
        out["bi_ids"].append(torch.stack([key // (vocab + 1) - 1, key % (vocab + 1)], -1).transpose(0, 1))
        out["bi_energy"].append(be.T)
        out["trigger_sum"].append(lin.gather(0, ui[:1]).squeeze(0))
        out["uni_count"].append(uni_count[ui].T)
        out["bi_count"].append(bi_count[bi_i].T)
    return {k_: torch.cat(v) for k_, v in out.items()}


# ---------------------------------------------------------------------- value vectors
@torch.no_grad()
def detect_then_suppress(adapter, layers: Sequence[int], neurons: Int[Tensor, "det 2"],
                         triggers: Int[Tensor, "det"], signs: Float[Tensor, "det"], *, k: int = 5,
                         chunk: int = 128) -> dict[str, Tensor]:
    """How each detector's value vector scores its own trigger token through the vocabulary.

    For detector ``(layer index, neuron)`` firing with sign ``s`` on trigger ``u``: the written
    direction is ``s · w_out``; its logit effect on the vocabulary is ``s · w_out @ W_U`` and its
    match with the input embeddings ``s · W_E @ w_out``.  Returned (per detector):
    ``unembed_pct`` / ``embed_pct`` — the fraction of the vocabulary scored *below* the trigger
    (0 = the trigger is the most suppressed token, 0.5 = typical, 1 = most promoted);
    ``unembed_z`` — the trigger's z-score; ``promoted`` / ``suppressed`` — top-``k`` token ids.
    """
    n_det = len(neurons)
    if n_det == 0:
        z = torch.zeros(0)
        return {"unembed_pct": z, "embed_pct": z, "unembed_z": z, "promoted": torch.zeros(0, k, dtype=torch.long),
                "suppressed": torch.zeros(0, k, dtype=torch.long)}
    W_U, W_E = adapter.W_U.float(), adapter.W_E.float()
    rows = torch.stack([adapter.W_out(layers[j])[n] for j, n in neurons.tolist()]).float()
    rows = rows * signs.to(rows)[:, None]
    res: dict[str, list] = {k_: [] for k_ in ("unembed_pct", "embed_pct", "unembed_z", "promoted", "suppressed")}
    for c0 in range(0, n_det, chunk):
        w = rows[c0:c0 + chunk]
        u = triggers[c0:c0 + chunk].to(w.device).long()[:, None]
        eff, emb = w @ W_U, w @ W_E.T  # det vocab
        t_eff, t_emb = eff.gather(1, u), emb.gather(1, u)
        res["unembed_pct"].append((eff < t_eff).float().mean(1))
        res["embed_pct"].append((emb < t_emb).float().mean(1))
        res["unembed_z"].append(((t_eff - eff.mean(1, keepdim=True)) / eff.std(1, keepdim=True).clamp_min(1e-12))[:, 0])
        res["promoted"].append(eff.topk(k, 1).indices)
        res["suppressed"].append((-eff).topk(k, 1).indices)
    return {k_: torch.cat(v).cpu() for k_, v in res.items()}
