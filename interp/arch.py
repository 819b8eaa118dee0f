"""The one place that knows how each architecture is laid out.

Every method in interp reads and writes the same named **sites** (see :data:`SITES`), and asks
the adapter for weights in one canonical orientation (``W_U: [d_model, vocab]``,
``W_out: [d_mlp, d_model]``, ``W_O: [head, d_head, d_model]`` …).  Nothing outside this file
(and the engines, which translate sites into their own hook points) reaches into
``model.model.layers[i].mlp.down_proj``.

The adapter holds references to the *original* weight tensors and modules, captured when the
model is loaded: the TransformerLens bridge later wraps the same modules in place, and the
parameters stay the same objects, so the adapter keeps working under every engine.

Supported families:

* ``llama`` (also ``mistral``, ``qwen2``): pre-norm RMSNorm blocks, rotary positions,
  grouped-query attention, gated (SwiGLU) MLP.  The default model is Llama.
* ``gpt2``: pre-norm LayerNorm blocks, learned positions, fused QKV (``Conv1D``), GELU MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .errors import LayerIndexError, SiteError, UnsupportedArchitectureError

#: site name -> (has a layer index, shape, what it is).  Shapes use the names of ModelAdapter.
SITES: dict[str, tuple[bool, str, str]] = {
    "embed": (False, "batch pos d_model", "token-embedding output (no positional embedding)"),
    "resid_pre": (True, "batch pos d_model", "residual stream entering the block"),
    "resid_mid": (True, "batch pos d_model", "residual stream after attention, before the MLP"),
    "resid_post": (True, "batch pos d_model", "residual stream leaving the block"),
    "attn_out": (True, "batch pos d_model", "attention output added to the residual"),
    "mlp_out": (True, "batch pos d_model", "MLP output added to the residual"),
    "mlp_post": (True, "batch pos d_mlp", "MLP neuron activations: the input of the down-projection"),
    "attn_q": (True, "batch pos head d_head", "per-head queries: the query projection's output (before rotary)"),
    "attn_k": (True, "batch pos kv_head d_head", "per-KV-head keys: the key projection's output (before rotary)"),
    "attn_v": (True, "batch pos kv_head d_head", "per-KV-head values: the value projection's output"),
    "attn_z": (True, "batch pos head d_head", "per-head attention-weighted values, before W_O"),
    "head_out": (True, "batch pos head d_model", "per-head outputs z_h W_O^h (read only, derived)"),
    "attn_pattern": (True, "batch head query key", "attention probabilities (read only)"),
    "attn_scores": (True, "batch head query key", "pre-softmax scores (edit: block edges only)"),
}

#: the three per-layer block outputs under the short names every method uses — causal-trace kinds
#: (ROME calls the block output the "hidden" state), probe components (Zhao et al.'s residual,
#: attention and MLP outputs), knockout / lens summaries
COMPONENTS: dict[str, str] = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}

#: units a method can address one at a time (patching, AtP, clamping), and the site that holds them
UNIT_SITES: dict[str, str] = {"head": "attn_z", "neuron": "mlp_post"}

#: sites whose trailing axis can be edited one unit at a time, and what a unit is there
UNIT_AXES: dict[str, str] = {**{site: unit for unit, site in UNIT_SITES.items()}, "attn_scores": "head",
                             "attn_q": "head", "attn_k": "kv_head", "attn_v": "kv_head"}

#: the per-head query / key / value sites, in the order of a fused projection's output ([q | k | v])
QKV_SITES = ("attn_q", "attn_k", "attn_v")

#: sites an engine provides natively; the others are derived by :mod:`interp.model`.
PRIMITIVE_SITES = ("embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
                   "mlp_post", "attn_q", "attn_k", "attn_v", "attn_z", "attn_pattern", "attn_scores")

#: keyword arguments a decoder layer receives from the model's forward that run along the
#: positions, with the axis of the positions (``attention_mask``: its query axis).  The work-
#: skipping path (:mod:`interp.skipping`) slices them to the positions it computes; every
#: supported family passes a subset of these (and its cache object, which it replaces).
BLOCK_SEQ_ARGS: dict[str, int] = {"attention_mask": -2, "position_ids": -1, "position_embeddings": -2,
                                  "cache_position": -1}
BLOCK_CACHE_ARGS = ("cache", "past_key_values")

#: order of sites inside one block, as they are computed (nnsight must touch them in this order)
SITE_ORDER = {s: i for i, s in enumerate(
    ["resid_pre", "attn_scores", "attn_q", "attn_k", "attn_v", "attn_z", "attn_out", "attn_pattern", "resid_mid",
     "mlp_post", "mlp_out", "resid_post"])}


def check_site(site: str) -> None:
    """Raise a :class:`~interp.errors.SiteError` naming the valid sites unless ``site`` is one of :data:`SITES`."""
    if site not in SITES:
        raise SiteError(f"unknown site {site!r}; valid sites: {', '.join(SITES)}")


def check_components(components, what: str = "component") -> list[str]:
    """Names from :data:`COMPONENTS` (white space stripped), or a :class:`SiteError` that lists them."""
    comps = [c.strip() for c in ([components] if isinstance(components, str) else components) if c.strip()]
    bad = [c for c in comps if c not in COMPONENTS]
    if bad or not comps:
        hint = " ('hidden' is ROME's name of 'resid')" if "hidden" in bad else ""
        raise SiteError(f"unknown {what}(s) {bad or list(comps)}; choose from "
                        + ", ".join(f"{k} (= {v})" for k, v in COMPONENTS.items()) + hint)
    return comps


@dataclass(frozen=True)
class _Layout:
    family: str
    layers: str
    embed: str
    pos_embed: str | None
    final_norm: str
    attn: str
    o_proj: str
    ln1: str
    ln2: str
    mlp: str
    down: str
    up: str
    gate: str | None
    act: str  # the MLP's activation function module
    rotary: str | None = None  # the model's rotary-embedding module (cos, sin per position)
    #: the query, key and value projections (one fused module three times: GPT-2's ``c_attn``,
    #: whose output is [q | k | v] along its last axis)
    qkv: tuple[str, str, str] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")

    @property
    def fused_qkv(self) -> bool:
        """Whether one module computes queries, keys and values together."""
        return len(set(self.qkv)) == 1


_LLAMA = _Layout("llama", "model.layers", "model.embed_tokens", None, "model.norm", "self_attn",
                 "self_attn.o_proj", "input_layernorm", "post_attention_layernorm", "mlp",
                 "mlp.down_proj", "mlp.up_proj", "mlp.gate_proj", "mlp.act_fn", "model.rotary_emb")
_GPT2 = _Layout("gpt2", "transformer.h", "transformer.wte", "transformer.wpe", "transformer.ln_f",
                "attn", "attn.c_proj", "ln_1", "ln_2", "mlp", "mlp.c_proj", "mlp.c_fc", None, "mlp.act",
                 qkv=("attn.c_attn",) * 3)

LAYOUTS: dict[str, _Layout] = {"llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "gpt2": _GPT2}


def _get(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


class Weights:
    """The canonical weights of one model, computed from its modules (:class:`ModelAdapter` is one).

    Every orientation is fixed here once (``W_U: [d_model, vocab]``, ``W_out: [d_mlp, d_model]``,
    ``W_O: [head, d_head, d_model]`` …).  The class uses nothing but torch, so it also runs on an
    NDIF server, shipped by value (:mod:`interp.shipped`): :meth:`over` gives the same weights read
    through the server's handles to the same modules (nnsight envoys), so a computation on the
    weights is written once and runs wherever the model is.
    """

    #: attributes holding a module or a list of modules (one per layer)
    MODULES = ("embed_module", "pos_embed_module", "final_norm_module", "lm_head", "attn", "o_proj",
               "ln1", "ln2", "mlp", "down", "up", "gate", "rotary")
    #: the plain facts the weights need
    FACTS = ("model_type", "family", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp",
             "vocab_size", "n_ctx", "final_norm_centres", "attn_code")

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` as a non-negative index, or raise a clear error."""
        if not isinstance(layer, int) or not -self.n_layers <= layer < self.n_layers:
            raise LayerIndexError(
                f"layer {layer!r} out of range: the model has {self.n_layers} layers "
                f"(valid: 0..{self.n_layers - 1}, or negative from the end)")
        return layer % self.n_layers

    def over(self, handle: Callable) -> "Weights":
        """The same weights read through ``handle(module)`` (e.g. the envoy of a remote model)."""
        w = Weights.__new__(Weights)
        for k in self.FACTS:
            setattr(w, k, getattr(self, k))
        for k in self.MODULES:
            v = getattr(self, k)
            setattr(w, k, None if v is None else [handle(m) for m in v] if isinstance(v, list) else handle(v))
        return w

    def _linear_in_out(self, mod: nn.Module) -> Tensor:
        """Weight as [in, out] whatever the module type (nn.Linear stores [out, in])."""
        w = mod.weight
        return w if self.family == "gpt2" else w.T

    def W_out(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        """Down-projection: row i is neuron i's value vector (what it writes)."""
        return self._linear_in_out(self.down[self.check_layer(layer)])

    def W_in(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        """Up-projection (``c_fc`` for GPT-2): column i is what neuron i reads."""
        return self._linear_in_out(self.up[self.check_layer(layer)])

    def W_gate(self, layer: int) -> Float[Tensor, "d_model d_mlp"] | None:
        """Gate projection of gated MLPs, else None."""
        return None if self.gate is None else self._linear_in_out(self.gate[self.check_layer(layer)])

    def W_O(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        """Output projection per head: ``W_O[h]`` maps head ``h``'s ``d_head`` values into the residual."""
        w = self._linear_in_out(self.o_proj[self.check_layer(layer)])
        return w.reshape(self.n_heads, self.d_head, self.d_model)

    def b_O(self, layer: int) -> Float[Tensor, "d_model"]:
        """Output-projection bias (zeros when the model has none)."""
        b = getattr(self.o_proj[self.check_layer(layer)], "bias", None)
        return torch.zeros(self.d_model, dtype=self.W_U.dtype, device=self.W_U.device) if b is None else b

    def W_V(self, layer: int) -> Float[Tensor, "head d_model d_head"]:
        """Value weights per *query* head (GQA key/value heads repeated to match)."""
        layer = self.check_layer(layer)
        attn = self.attn[layer]
        if self.family == "gpt2":
            w = attn.c_attn.weight[:, 2 * self.d_model:]  # Conv1D: [in, 3*d]
        else:
            w = attn.v_proj.weight.T
        w = w.reshape(self.d_model, self.n_kv_heads, self.d_head).permute(1, 0, 2)
        return w.repeat_interleave(self.n_heads // self.n_kv_heads, dim=0)

    def b_V(self, layer: int) -> Float[Tensor, "head d_head"]:
        """Value bias per *query* head (zeros when the model has none; GQA heads repeated)."""
        layer = self.check_layer(layer)
        attn = self.attn[layer]
        if self.family == "gpt2":
            b = attn.c_attn.bias[2 * self.d_model:]
        else:
            b = getattr(attn.v_proj, "bias", None)
            if b is None:
                return torch.zeros(self.n_heads, self.d_head, dtype=self.W_U.dtype, device=self.W_U.device)
        b = b.reshape(self.n_kv_heads, self.d_head)
        return b.repeat_interleave(self.n_heads // self.n_kv_heads, dim=0)

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """Unembedding ``[d_model, vocab]`` (the LM head, transposed)."""
        return self.lm_head.weight.T

    @property
    def b_U(self) -> Float[Tensor, "vocab"] | None:
        """LM-head bias, or None."""
        return getattr(self.lm_head, "bias", None)

    @property
    def W_E(self) -> Float[Tensor, "vocab d_model"]:
        """Token embedding matrix ``[vocab, d_model]``."""
        return self.embed_module.weight

    # ------------------------------------------------------------------ functions
    def final_norm(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The model's real final norm (RMSNorm / LayerNorm with its learned gain)."""
        return self.final_norm_module(h)

    def embed_input(self, input_ids: Tensor, position_ids: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering layer 0: token embedding (the ``embed`` site), plus the
        learned position embedding for GPT-2 (rotary families add positions inside attention)."""
        x = self.embed_module(input_ids)
        if self.pos_embed_module is not None:
            x = x + self.pos_embed_module(position_ids).to(x.dtype)
        return x

    def unembed(self, h: Float[Tensor, "... d_model"], *, norm: bool = True,
                tokens: Sequence[int] | None = None) -> Float[Tensor, "... vocab"]:
        """Logits of a residual-stream vector: final norm (optional) then the LM head — only the
        columns of ``tokens`` (in that order) when given."""
        x = self.final_norm(h) if norm else h
        W, b = self.W_U, self.b_U
        if tokens is not None:
            idx = torch.as_tensor(list(tokens), dtype=torch.long, device=W.device)
            if idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < W.shape[1]:
                raise LayerIndexError(f"token ids {list(tokens)} outside the vocabulary 0..{W.shape[1] - 1}")
            W, b = W[:, idx], (None if b is None else b[idx])
        out = x @ W
        return out if b is None else out + b

    def final_norm_linear(self, x_final: Float[Tensor, "d_model"]
                          ) -> tuple[Callable[[Tensor], Tensor], Float[Tensor, "d_model"]]:
        """The final norm as a linear map frozen at ``x_final``'s scale: ``c ↦ γ ⊙ center(c) / σ``.

        Returns ``(fn, bias)`` with ``bias`` the norm's additive term (LayerNorm β, else 0), so
        ``final_norm(x_final) == fn(x_final) + bias`` — the usual direct-logit-attribution
        convention (TransformerLens ``apply_ln_to_stack`` with the final residual's scale).  Torch only,
        so it also runs where a remote model runs.
        """
        mod = self.final_norm_module
        x = x_final.float()
        gain = getattr(mod, "weight", None)
        gain = torch.ones_like(x) if gain is None else gain.detach().float().to(x.device)
        if self.final_norm_centres:
            sigma = torch.sqrt(x.var(-1, unbiased=False) + mod.eps)
            bias = mod.bias.detach().float().to(x.device) if mod.bias is not None else torch.zeros_like(x)
            return (lambda c: gain * (c.float() - c.float().mean(-1, keepdim=True)) / sigma), bias
        eps = getattr(mod, "variance_epsilon", None) or getattr(mod, "eps", 1e-6)
        sigma = torch.sqrt(x.pow(2).mean(-1) + eps)
        return (lambda c: gain * c.float() / sigma), torch.zeros_like(x)

    def mlp_sublayer(self, layer: int, resid_mid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The MLP's contribution to the residual, ``mlp(ln2(resid_mid))``, from the model's own modules.

        Both families are pre-norm, so ``resid_post = resid_mid + mlp_sublayer(resid_mid)``.
        """
        layer = self.check_layer(layer)
        return self.mlp[layer](self.ln2[layer](resid_mid))

    def attention_pattern(self, layer: int, resid_pre: Float[Tensor, "batch pos d_model"],
                          position_ids: Tensor, attention_mask: Tensor | None = None
                          ) -> Float[Tensor, "batch head pos pos"]:
        """Attention probabilities of block ``layer`` recomputed from the residual entering it.

        Uses the model's own modules — pre-attention norm, query/key projections (``c_attn`` for
        GPT-2), the rotary embedding (Llama family), the module's ``scaling`` — then the causal
        and padding mask and the softmax the eager attention applies (Llama: in float32).  Equals
        the ``attn_pattern`` an engine reads (``tests/test_atp_star.py``).  For a method that needs
        one layer's pattern under many edited inputs without running the model (AtP*'s QK fix);
        torch only, so it also runs where a remote model runs (``Model.run(reduce=)``).
        ``position_ids`` and ``attention_mask`` (1 = real token) broadcast over the batch.
        """
        layer = self.check_layer(layer)
        attn = self.attn[layer]
        h = self.ln1[layer](resid_pre)
        b, n, _ = h.shape
        if self.family == "gpt2":
            q, k, _ = attn.c_attn(h).split(self.d_model, dim=2)
        else:
            q, k = attn.q_proj(h), attn.k_proj(h)
        q = q.view(b, n, -1, self.d_head).transpose(1, 2)
        k = k.view(b, n, -1, self.d_head).transpose(1, 2)
        pos = position_ids.to(h.device).expand(b, n)
        if self.rotary is not None:
            import importlib
            cos, sin = self.rotary(h, pos)
            q, k = importlib.import_module(self.attn_code).apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)) * attn.scaling
        allowed = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
        if attention_mask is not None:
            allowed = allowed & attention_mask.to(h.device).bool().expand(b, n)[:, None, None, :]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        if self.family == "gpt2":
            return scores.softmax(-1)
        return scores.softmax(-1, dtype=torch.float32).to(q.dtype)

    def ln1_fn(self, layer: int) -> Callable[[Tensor], Tensor]:
        """The attention input norm of ``layer`` as a callable (RMSNorm / LayerNorm module)."""
        return self.ln1[self.check_layer(layer)]


class ModelAdapter(Weights):
    """Architecture facts and canonical weights of one loaded Hugging Face causal LM."""

    def __init__(self, hf_model: nn.Module):
        cfg = hf_model.config
        model_type = getattr(cfg, "model_type", None)
        if model_type not in LAYOUTS:
            raise UnsupportedArchitectureError(
                f"architecture {model_type!r} ({type(hf_model).__name__}) has no interp adapter; "
                f"supported model types: {', '.join(sorted(LAYOUTS))}")
        self.model_type: str = model_type
        self.layout = LAYOUTS[model_type]
        self.family = self.layout.family
        lay = self.layout
        self.blocks: list[nn.Module] = list(_get(hf_model, lay.layers))
        self.n_layers = len(self.blocks)
        if self.family == "gpt2":
            self.n_heads = cfg.n_head
            self.n_kv_heads = cfg.n_head
            self.d_model = cfg.n_embd
            self.n_ctx = cfg.n_positions
        else:
            self.n_heads = cfg.num_attention_heads
            self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            self.d_model = cfg.hidden_size
            self.n_ctx = cfg.max_position_embeddings
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.embed_module = _get(hf_model, lay.embed)
        self.pos_embed_module = _get(hf_model, lay.pos_embed) if lay.pos_embed else None
        self.final_norm_module = _get(hf_model, lay.final_norm)
        #: whether the final norm subtracts the mean before scaling (LayerNorm) or only rescales (RMSNorm)
        self.final_norm_centres: bool = isinstance(self.final_norm_module, nn.LayerNorm)
        self.lm_head = hf_model.get_output_embeddings()
        self.vocab_size = self.lm_head.weight.shape[0]
        # references to the original modules, kept before any engine wraps them
        self.attn = [_get(b, lay.attn) for b in self.blocks]
        self.o_proj = [_get(b, lay.o_proj) for b in self.blocks]
        #: per layer, the (query, key, value) projection modules (the same fused module thrice for GPT-2)
        self.qkv = [tuple(_get(b, path) for path in lay.qkv) for b in self.blocks]
        self.ln1 = [_get(b, lay.ln1) for b in self.blocks]
        self.ln2 = [_get(b, lay.ln2) for b in self.blocks]
        self.mlp = [_get(b, lay.mlp) for b in self.blocks]
        self.down = [_get(b, lay.down) for b in self.blocks]
        self.up = [_get(b, lay.up) for b in self.blocks]
        self.gate = [_get(b, lay.gate) for b in self.blocks] if lay.gate else None
        self.act = [_get(b, lay.act) for b in self.blocks]
        self.rotary = _get(hf_model, lay.rotary) if lay.rotary else None
        #: the Python module of the attention code (its ``apply_rotary_pos_emb``), by name, so that
        #: :meth:`attention_pattern` also runs on a server's copy (where ``attn`` is a handle)
        self.attn_code: str = type(self.attn[0]).__module__
        self.d_mlp = self.W_out(0).shape[0]

    # ------------------------------------------------------------------ checks
    def site_shape(self, site: str) -> str:
        """The shape names of a site's tensor, e.g. ``"batch pos d_model"``."""
        check_site(site)
        return SITES[site][1]

    def mlp_gate_up(self, layer: int, resid_mid: Float[Tensor, "... d_model"]
                    ) -> tuple[Float[Tensor, "... d_mlp"], Float[Tensor, "... d_mlp"]]:
        """The two factors of a gated MLP's neurons, from the residual entering the MLP.

        ``act(gate(ln2(x)))`` and ``up(ln2(x))``, computed with the model's own modules in the
        model's order, so their product equals the ``mlp_post`` an engine reads, bit for bit.
        """
        if self.gate is None:
            raise SiteError(f"the {self.model_type} MLP is not gated: it has no gate and up factors, "
                            f"only mlp_post (the activation)")
        layer = self.check_layer(layer)
        h = self.ln2[layer](resid_mid)
        return self.act[layer](self.gate[layer](h)), self.up[layer](h)

    def describe(self) -> dict:
        """The architecture's sizes as a JSON-able dict (``interp info``)."""
        return {
            "model_type": self.model_type, "family": self.family, "n_layers": self.n_layers,
            "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "d_model": self.d_model,
            "d_head": self.d_head, "d_mlp": self.d_mlp, "vocab_size": self.vocab_size,
            "n_ctx": self.n_ctx,
        }

    # ------------------------------------------------------------------ norm and weight facts methods ask for
    def value_vector_mask(self, layer: int, index: int) -> Float[Tensor, "rows cols"]:
        """A 0/1 mask, shaped like the down-projection weight *as stored*, selecting neuron ``index``'s
        value vector (row ``index`` of :meth:`W_out`): a gradient multiplied by it moves that vector only."""
        w = self.down[self.check_layer(layer)].weight
        mask = torch.zeros_like(w)
        (mask if self.family == "gpt2" else mask.T)[index] = 1  # Conv1D stores [in, out], nn.Linear [out, in]
        return mask
