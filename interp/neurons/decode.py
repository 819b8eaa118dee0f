"""Neuron decoding through the LM head (Davies 2025; Geva et al. 2022 for value vectors).

Every MLP neuron ``i`` of layer ``l`` has three directions in the residual stream:

* ``out``  — its **write** direction, the value vector ``W_out(l)[i]`` (a row of the
  down-projection in interp's canonical orientation);
* ``up``   — a **read** direction, ``W_in(l)[:, i]`` (the up-projection; ``c_fc`` for GPT-2);
* ``gate`` — the other read direction of gated (SwiGLU) MLPs, ``W_gate(l)[:, i]``.

Decoding a direction ``v`` = ``v @ W_U``: a score per vocabulary token.  ``final_norm="gain"``
first multiplies ``v`` by the final norm's learned gain (and centres it for LayerNorm models);
``"none"`` uses the raw vector, as ConceptVectors does.  Davies does not say which, so both are
supported and the choice is stored in the result.  The norm's *scaling* is left out on purpose:
it divides a whole vector by one number and cannot change a ranking.

Memory is fixed whatever the model: for each (direction, layer) the ``[d_mlp, d_model]`` matrix
is multiplied with one vocabulary chunk of ``W_U`` at a time and only a running top-k / bottom-k
per neuron is kept (``[d_mlp, k]``).  The full ``layer × neuron × direction × vocab`` tensor
(30 × 1536 × 3 × 49152 floats = 27 GB for the default model) never exists.  Top-k inside a
chunk uses a two-stage selection — the max of each group of ``g`` consecutive tokens, the top-k
groups, then the top-k of their members — which is exact (a top-k element's group max is itself
among the top-k group maxes) and much cheaper on a CPU than ``torch.topk`` over the whole chunk.
The matmuls run on the model's device; see ``benchmarks/bench_neurons.py`` for the cost against
the bare chunked-matmul floor.

Results are a :class:`NeuronMap` (tensors in safetensors, settings in JSON, reloadable), searched
by token or word with :meth:`NeuronMap.search`, and compared across two checkpoints with
:func:`compare_maps` (fraction of neurons whose top token is unchanged, per layer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import CheckpointMismatchError, InterpError, LayerIndexError, PromptError
from ..remote import ships_with_requests
from ..results import Result

ships_with_requests(__name__)  # its reductions run where the model runs (interp.remote)

DIRECTIONS = ("out", "up", "gate")
FINAL_NORM_CHOICES = ("none", "gain")


# ---------------------------------------------------------------------- directions
def available_directions(adapter) -> tuple[str, ...]:
    """The neuron directions a model has: ``out``, ``up`` and, for gated MLPs, ``gate``."""
    return DIRECTIONS if adapter.W_gate(0) is not None else ("out", "up")


def check_directions(adapter, directions: Sequence[str] | None) -> list[str]:
    """``directions`` (default: all available) validated, or a clear error naming the valid ones."""
    avail = available_directions(adapter)
    if directions is None:
        return list(avail)
    if isinstance(directions, str):
        directions = [directions]
    out = []
    for d in directions:
        if d not in DIRECTIONS:
            raise InterpError(f"unknown neuron direction {d!r}; valid: {', '.join(DIRECTIONS)}")
        if d not in avail:
            raise InterpError(f"direction {d!r} does not exist in a {adapter.family} MLP "
                              f"(no gate projection); use {', '.join(avail)}")
        out.append(d)
    return list(dict.fromkeys(out))


def check_neuron(adapter, layer: int, neuron: int) -> tuple[int, int]:
    """Validate a (layer, neuron) address; returns it with a non-negative layer."""
    layer = adapter.check_layer(layer)
    if not isinstance(neuron, int) or not 0 <= neuron < adapter.d_mlp:
        raise LayerIndexError(f"neuron {neuron!r} out of range: layer {layer} has {adapter.d_mlp} "
                              f"neurons (valid: 0..{adapter.d_mlp - 1})")
    return layer, neuron


def neuron_directions(adapter, layer: int, direction: str) -> Float[Tensor, "d_mlp d_model"]:
    """One row per neuron: its write (``out``) or read (``up``, ``gate``) direction."""
    layer = adapter.check_layer(layer)
    if direction == "out":
        return adapter.W_out(layer)
    if direction == "up":
        return adapter.W_in(layer).T
    if direction == "gate":
        w = adapter.W_gate(layer)
        if w is None:
            raise InterpError(f"direction 'gate' does not exist in a {adapter.family} MLP")
        return w.T
    raise InterpError(f"unknown neuron direction {direction!r}; valid: {', '.join(DIRECTIONS)}")


def norm_transform(adapter, final_norm: str):
    """The linear part of the final norm applied before decoding (``none``: identity)."""
    if final_norm not in FINAL_NORM_CHOICES:
        raise InterpError(f"final_norm must be one of {FINAL_NORM_CHOICES}, not {final_norm!r}")
    if final_norm == "none":
        return lambda v: v
    gain = adapter.final_norm_module.weight
    centre = adapter.final_norm_centres

    def f(v):
        if centre:
            v = v - v.mean(-1, keepdim=True)
        return v * gain.to(v.dtype)
    return f


# ---------------------------------------------------------------------- top-k kernel
def _topk_grouped(x: Tensor, k: int, group: int, largest: bool = True) -> tuple[Tensor, Tensor]:
    """Exact top-k (or bottom-k) along the last axis via group extremes (see module docstring)."""
    n, V = x.shape
    if group <= 1 or V % group or k * group * 2 > V:
        return x.topk(k, -1, largest=largest)
    xv = x.view(n, V // group, group)
    ext = xv.amax(-1) if largest else xv.amin(-1)  # one pass, no negated copy for the bottom end
    _, gi = ext.topk(k, -1, largest=largest)  # n k
    cand = xv.gather(1, gi[:, :, None].expand(n, k, group)).reshape(n, k * group)
    v, j = cand.topk(k, -1, largest=largest)
    ids = (gi[:, :, None] * group + torch.arange(group, device=x.device)).reshape(n, k * group).gather(1, j)
    return v, ids


def _merge(run_v, run_i, v, i, k, largest=True):
    if run_v is None:
        return v, i
    cv, ci = torch.cat([run_v, v], -1), torch.cat([run_i, i], -1)
    mv, j = cv.topk(k, -1, largest=largest)
    return mv, ci.gather(1, j)


def decode_directions(D: Float[Tensor, "n d_model"], W_U: Float[Tensor, "d_model vocab"], k: int, *,
                      bottom: bool = True, vocab_chunk: int = 8192, group: int = 64
                      ) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"], Float[Tensor, "n k"] | None,
                                 Int[Tensor, "n k"] | None]:
    """Top-k (and bottom-k) tokens of ``D @ W_U`` per row, in vocabulary chunks.

    Returns ``(top_scores, top_ids, bottom_scores, bottom_ids)``, each ``[n, k]``, sorted
    (top: descending; bottom: ascending, most negative first).
    """
    V = W_U.shape[1]
    k = min(k, V)
    tv = ti = bv = bi = None
    for s in range(0, V, vocab_chunk):
        x = (D @ W_U[:, s:s + vocab_chunk]).contiguous()
        kk = min(k, x.shape[1])
        v, i = _topk_grouped(x, kk, group)
        tv, ti = _merge(tv, ti, v, i + s, k)
        if bottom:
            v, i = _topk_grouped(x, kk, group, largest=False)
            bv, bi = _merge(bv, bi, v, i + s, k, largest=False)
    return tv, ti, bv, bi


# ---------------------------------------------------------------------- result
@dataclass
class NeuronMap(Result):
    """Top-k / bottom-k vocabulary tokens of every neuron direction.

    Tensors are ``[direction, layer, neuron, k]`` (int32 ids, float32 scores = ``v · W_U[:, t]``
    after the optional final-norm gain); ``directions`` and ``layers`` name the first two axes.
    """

    stem = "neuron_map"
    tensor_fields = ("top_ids", "top_scores", "bottom_ids", "bottom_scores")
    json_tensors = False

    model: str
    directions: list[str]
    layers: list[int]
    k: int
    final_norm: str
    d_mlp: int
    vocab_size: int
    top_ids: Int[Tensor, "direction layer neuron k"]
    top_scores: Float[Tensor, "direction layer neuron k"]
    bottom_ids: Int[Tensor, "direction layer neuron k"] | None = None
    bottom_scores: Float[Tensor, "direction layer neuron k"] | None = None
    seconds: float = 0.0
    device: str = "cpu"

    # -------------------------------------------------------------- addressing
    def _d(self, direction: str) -> int:
        if direction not in self.directions:
            raise InterpError(f"direction {direction!r} is not in this map ({', '.join(self.directions)}); "
                              f"decode it with directions=[{direction!r}]")
        return self.directions.index(direction)

    def _l(self, layer: int) -> int:
        if layer not in self.layers:
            raise LayerIndexError(f"layer {layer!r} is not in this map (layers {self.layers[0]}.."
                                  f"{self.layers[-1]}); decode it with layers=[{layer}]")
        return self.layers.index(layer)

    def top(self, layer: int, neuron: int, direction: str = "out") -> tuple[list[int], list[float]]:
        """The top-k token ids and scores of one neuron direction (Davies 2025 labels a neuron by the first)."""
        if not isinstance(neuron, int) or not 0 <= neuron < self.d_mlp:
            raise LayerIndexError(f"neuron {neuron!r} out of range 0..{self.d_mlp - 1}")
        d, li = self._d(direction), self._l(layer)
        return self.top_ids[d, li, neuron].tolist(), self.top_scores[d, li, neuron].tolist()

    # -------------------------------------------------------------- search
    def search(self, token_ids: int | Sequence[int], *, direction: str | None = None,
               side: str = "top", limit: int | None = 50) -> list[dict]:
        """Neurons whose top-k (``side="top"``: promote) or bottom-k (suppress) holds a token.

        Returns dicts ``{layer, neuron, direction, token_id, rank, score}`` sorted by score
        (strongest first).  Use :func:`resolve_tokens` to turn a string into ids.
        """
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        if side not in ("top", "bottom"):
            raise InterpError(f"side must be 'top' or 'bottom', not {side!r}")
        T, S = (self.top_ids, self.top_scores) if side == "top" else (self.bottom_ids, self.bottom_scores)
        if T is None:
            raise InterpError("this map was decoded without bottom-k tokens (bottom=False)")
        dirs = self.directions if direction is None else [direction]
        hits = []
        for dname in dirs:
            d = self._d(dname)
            for tid in ids:
                m = T[d] == tid
                for li, n, r in m.nonzero().tolist():
                    hits.append({"layer": self.layers[li], "neuron": n, "direction": dname,
                                 "token_id": int(tid), "rank": r, "score": float(S[d, li, n, r])})
        hits.sort(key=lambda h: -h["score"] if side == "top" else h["score"])
        return hits if limit is None else hits[:limit]

    # -------------------------------------------------------------- tables
    def entries(self, tokenizer, *, layers: Sequence[int] | None = None) -> list[dict]:
        """One dict per (layer, neuron, direction): ``top_tokens``, ``top_scores`` (+ bottom)."""
        vocab = vocab_strings(tokenizer, self.vocab_size)
        out = []
        lay = self.layers if layers is None else layers
        for dname in self.directions:
            d = self._d(dname)
            for layer in lay:
                li = self._l(layer)
                ti, ts = self.top_ids[d, li].tolist(), self.top_scores[d, li].tolist()
                bi = self.bottom_ids[d, li].tolist() if self.bottom_ids is not None else None
                bs = self.bottom_scores[d, li].tolist() if self.bottom_scores is not None else None
                for n in range(self.d_mlp):
                    e = {"layer": layer, "neuron": n, "direction": dname,
                         "top_tokens": [vocab[t] for t in ti[n]], "top_ids": ti[n],
                         "top_scores": [round(s, 5) for s in ts[n]]}
                    if bi is not None:
                        e["bottom_tokens"] = [vocab[t] for t in bi[n]]
                        e["bottom_scores"] = [round(s, 5) for s in bs[n]]
                    out.append(e)
        return out


_VOCAB_CACHE: dict = {}


def vocab_strings(tokenizer, vocab_size: int | None = None) -> list[str]:
    """Decoded string of every token id (cached per tokenizer)."""
    key = (id(tokenizer), vocab_size)
    if key not in _VOCAB_CACHE:
        n = vocab_size or len(tokenizer)
        n_tok = len(tokenizer)
        strs = tokenizer.batch_decode([[i] for i in range(min(n, n_tok))])
        strs += [f"<id {i}>" for i in range(n_tok, n)]
        _VOCAB_CACHE[key] = strs
    return _VOCAB_CACHE[key]


def resolve_tokens(tokenizer, query: str | int, *, word: bool = False, vocab_size: int | None = None
                   ) -> list[int]:
    """Token ids for a search query.

    ``word=False``: ``query`` must be exactly one token (e.g. ``" Paris"`` with its leading
    space) or an integer id.  ``word=True``: every token whose text, stripped and case-folded,
    equals the stripped, case-folded query (``"paris"`` → ``" Paris"``, ``"Paris"``, ``"paris"`` …).
    """
    if isinstance(query, int) or (isinstance(query, str) and query.isdigit() and not word):
        return [int(query)]
    if not query or not query.strip():
        raise PromptError("empty search query: give a token such as ' Paris' or a word with word=True")
    if word:
        q = query.strip().casefold()
        ids = [i for i, s in enumerate(vocab_strings(tokenizer, vocab_size)) if s.strip().casefold() == q]
        if not ids:
            raise PromptError(f"no token of the vocabulary spells the word {query!r}; it is split into "
                              f"{len(tokenizer(query, add_special_tokens=False)['input_ids'])} tokens — "
                              f"search one of them as a token")
        return ids
    ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise PromptError(f"{query!r} is {len(ids)} tokens, not one: search a single token (mind the "
                          f"leading space, e.g. ' Paris') or use word=True")
    return ids


# ---------------------------------------------------------------------- decoding
def decode_neurons(model, *, layers: Sequence[int] | None = None, directions: Sequence[str] | None = None,
                   k: int = 10, final_norm: str = "none", bottom: bool = True, vocab_chunk: int = 8192,
                   group: int = 64, progress: bool = False) -> NeuronMap:
    """Decode every neuron's write/read directions through the unembedding (Davies 2025).

    Args:
        layers: layers to decode (default: all).
        directions: any of ``"out"`` (value vector, what the neuron writes), ``"up"``,
            ``"gate"`` (what it reads); default all the MLP has.
        k: tokens kept per neuron at each end.
        final_norm: ``"none"`` (raw ``v · W_U``, as ConceptVectors) or ``"gain"`` (multiply by
            the final norm's learned gain first).
        vocab_chunk: vocabulary columns per matmul (memory: ``d_mlp × vocab_chunk`` floats).

    Returns:
        :class:`NeuronMap` with ``[direction, layer, neuron, k]`` tensors on the CPU.
    """
    import time

    a = model.adapter if hasattr(model, "adapter") else model
    name = getattr(model, "name", "")
    dirs = check_directions(a, directions)
    lay = list(range(a.n_layers)) if layers is None else [a.check_layer(l) for l in layers]
    if not lay:
        raise LayerIndexError("no layers to decode: give at least one layer")
    if not isinstance(k, int) or k < 1:
        raise InterpError(f"k must be a positive integer, not {k!r}")
    norm_transform(a, final_norm)  # checks the choice before anything runs
    shape = (len(dirs), len(lay), a.d_mlp, min(k, a.vocab_size))
    top_i = torch.empty(shape, dtype=torch.int32)
    top_s = torch.empty(shape, dtype=torch.float32)
    bot_i = torch.empty(shape, dtype=torch.int32) if bottom else None
    bot_s = torch.empty(shape, dtype=torch.float32) if bottom else None
    it = range(len(lay))
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="decode neurons", unit="layer")
    t0 = time.perf_counter()
    for li in it:
        tv, ti, bv, bi = _compute(model, decode_layer, lay[li], dirs, final_norm, k, bottom, vocab_chunk, group)
        top_s[:, li], top_i[:, li] = tv, ti
        if bottom:
            bot_s[:, li], bot_i[:, li] = bv, bi
    secs = time.perf_counter() - t0
    dev = a.W_U.device
    return NeuronMap(name, dirs, lay, shape[-1], final_norm, a.d_mlp, a.vocab_size, top_i, top_s,
                     bot_i, bot_s, secs, "remote" if dev.type == "meta" else str(dev))


def _compute(model, fn, *args):
    """``fn(weights, *args)`` where the weights are (``Model.compute``; an adapter: here)."""
    if hasattr(model, "compute"):
        return model.compute(fn, *args)
    with torch.no_grad():
        return fn(model, *args)


def decode_layer(w, layer: int, directions: Sequence[str], final_norm: str, k: int, bottom: bool,
                 vocab_chunk: int, group: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Top-k / bottom-k tokens of every neuron of one layer, ``[direction, neuron, k]`` each.

    Runs where the model runs (``Model.compute``): for a remote model the weights stay on the server
    and only the tokens and scores travel."""
    fn = norm_transform(w, final_norm)
    parts = [decode_directions(fn(neuron_directions(w, layer, d)).contiguous(), w.W_U, k, bottom=bottom,
                               vocab_chunk=vocab_chunk, group=group) for d in directions]
    tv = torch.stack([p[0] for p in parts]).float()
    ti = torch.stack([p[1] for p in parts]).int()
    if not bottom:
        return tv, ti, None, None
    return tv, ti, torch.stack([p[2] for p in parts]).float(), torch.stack([p[3] for p in parts]).int()


def decode_vector(w, layer: int, neuron: int, direction: str, final_norm: str, k: int) -> tuple:
    """Top-k and bottom-k ``(scores, ids)`` of one neuron direction over the whole vocabulary."""
    v = norm_transform(w, final_norm)(neuron_directions(w, layer, direction)[neuron])
    s = v @ w.W_U
    tv, ti = s.topk(k)
    bv, bi = s.topk(k, largest=False)
    return tv, ti, bv, bi


def decode_neuron(model, layer: int, neuron: int, direction: str = "out", *, k: int = 10,
                  final_norm: str = "none") -> dict:
    """Top/bottom tokens of one neuron (validated address); the full-vocabulary reference path."""
    a = model.adapter
    layer, neuron = check_neuron(a, layer, neuron)
    check_directions(a, [direction])
    norm_transform(a, final_norm)
    tv, ti, bv, bi = model.compute(decode_vector, layer, neuron, direction, final_norm, k)
    vocab = vocab_strings(model.tokenizer, a.vocab_size)
    return {"layer": layer, "neuron": neuron, "direction": direction, "final_norm": final_norm,
            "top_ids": ti.tolist(), "top_tokens": [vocab[i] for i in ti.tolist()],
            "top_scores": tv.tolist(), "bottom_ids": bi.tolist(),
            "bottom_tokens": [vocab[i] for i in bi.tolist()], "bottom_scores": bv.tolist()}


# ---------------------------------------------------------------------- comparison
@dataclass
class MapComparison(Result):
    """Two checkpoints' neuron maps: per direction and layer, how many neurons kept their label."""

    stem = "neuron_map_comparison"

    model_a: str
    model_b: str
    directions: list[str]
    layers: list[int]
    k: int
    final_norm: str
    #: direction -> per-layer fraction of neurons whose top-1 token is the same in both maps
    top1_unchanged: dict[str, list[float]]
    #: direction -> per-layer mean Jaccard overlap of the top-k token sets
    topk_jaccard: dict[str, list[float]]
    overall_top1_unchanged: dict[str, float]

    def figure(self):
        """Fraction of neurons whose top-1 token is unchanged, per layer and direction."""
        import plotly.graph_objects as go

        from ..figures import style
        fig = go.Figure()
        for d in self.directions:
            fig.add_trace(go.Scatter(x=self.layers, y=self.top1_unchanged[d], mode="lines+markers",
                                     name=f"{d}: top-1 unchanged"))
            fig.add_trace(go.Scatter(x=self.layers, y=self.topk_jaccard[d], mode="lines",
                                     line=dict(dash="dot"), name=f"{d}: top-{self.k} Jaccard"))
        fig.update_xaxes(title="layer")
        fig.update_yaxes(title="fraction of neurons / mean Jaccard", range=[0, 1.02])
        return style(fig, title=f"Neuron labels kept: {self.model_a} → {self.model_b}")


def check_same_shape(a_adapter, b_adapter, what_a: str = "model A", what_b: str = "model B") -> None:
    """Refuse two checkpoints whose MLPs or vocabularies differ (their neurons do not correspond)."""
    fields = ("n_layers", "d_model", "d_mlp", "vocab_size")
    diff = [(f, getattr(a_adapter, f), getattr(b_adapter, f)) for f in fields
            if getattr(a_adapter, f) != getattr(b_adapter, f)]
    if diff:
        txt = ", ".join(f"{f}: {x} vs {y}" for f, x, y in diff)
        raise CheckpointMismatchError(
            f"{what_a} and {what_b} have different shapes ({txt}); neuron-by-neuron comparison needs "
            f"two checkpoints of the same architecture (e.g. base vs instruct, before vs after fine-tuning)")


def compare_maps(map_a: NeuronMap, map_b: NeuronMap) -> MapComparison:
    """Fraction of neurons whose top token is unchanged, per direction and layer (Davies 2025)."""
    keys = ("d_mlp", "vocab_size", "directions", "layers", "k", "final_norm")
    diff = [(f, getattr(map_a, f), getattr(map_b, f)) for f in keys if getattr(map_a, f) != getattr(map_b, f)]
    if diff:
        txt = "; ".join(f"{f}: {str(x)[:40]} vs {str(y)[:40]}" for f, x, y in diff)
        raise CheckpointMismatchError(f"the two neuron maps do not match ({txt}); decode both checkpoints "
                                      f"with the same layers, directions, k and final_norm, from models "
                                      f"of the same shape")
    same = (map_a.top_ids[..., 0] == map_b.top_ids[..., 0]).float().mean(-1)  # dir layer
    A, B = map_a.top_ids.long(), map_b.top_ids.long()
    inter = (A[..., :, None] == B[..., None, :]).any(-1).sum(-1).float()  # dir layer neuron
    jac = (inter / (2 * map_a.k - inter)).mean(-1)
    t1 = {d: same[i].tolist() for i, d in enumerate(map_a.directions)}
    jj = {d: jac[i].tolist() for i, d in enumerate(map_a.directions)}
    overall = {d: float((map_a.top_ids[i, ..., 0] == map_b.top_ids[i, ..., 0]).float().mean())
               for i, d in enumerate(map_a.directions)}
    return MapComparison(map_a.model, map_b.model, list(map_a.directions), list(map_a.layers), map_a.k,
                         map_a.final_norm, t1, jj, overall)


def compare_checkpoints(model_a, model_b, **decode_kwargs) -> MapComparison:
    """Decode two checkpoints of the same shape and compare their maps (Davies 2025: base vs instruct)."""
    check_same_shape(model_a.adapter, model_b.adapter, getattr(model_a, "name", "model A"),
                     getattr(model_b, "name", "model B"))
    return compare_maps(decode_neurons(model_a, **decode_kwargs), decode_neurons(model_b, **decode_kwargs))


def replace(map_: NeuronMap, **kw) -> NeuronMap:
    """A copy of the map with the fields ``kw`` replaced (``dataclasses.replace``)."""
    return dataclasses.replace(map_, **kw)
