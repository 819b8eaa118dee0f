"""``Model``: a loaded model, its adapter, its tokenizer and one engine, behind one ``run``.

``Model.run`` is the data path every method uses::

    prompts → Batch (tokens, left padding) → [InterventionPlan] → engine forward(s) → RunOutput

It (1) expands the requested reads into hook points, (2) compiles the plan's edits into
vectorised index tensors, (3) adds the *derived* sites — ``head_out`` is read as ``attn_z``
times ``W_O``, and a ``resid_mid`` write becomes an ``attn_out`` edit (``attn_out +=
new_mid − old_mid``, exact for untouched entries) because no engine can write the residual sum
itself — and (4) runs the rows in chunks of ``max_rows``.  Only the asked-for positions of the
asked-for sites are kept, and only the last-token logits unless told otherwise, so a sweep of
thousands of rows stays in fixed memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .arch import PRIMITIVE_SITES, SITES, ModelAdapter, check_site
from .capabilities import LAST_LOGITS, REMOTE, SKIP_WORK
from .errors import EngineError, SiteError
from .interventions import InterventionPlan
from .shipped import cat_rows, edit_point, gather, head_out, hook_points, keep_for_grad, take_rows, to_cpu
from .tokens import Batch, find_span, tokenize

ReadSpec = str | tuple[str, "int | None"]


class ActivationCache:
    """Activations keyed by ``(site, layer)``; ``cache["resid_post", 3]`` or ``cache.stack(site)``."""

    def __init__(self, data: dict[tuple[str, int | None], Tensor], positions: list[int] | None):
        self.data = data
        self.positions = positions

    def __getitem__(self, key) -> Tensor:
        if isinstance(key, str):
            key = (key, None)
        if key not in self.data:
            raise SiteError(f"{key} was not cached; cached: {sorted(self.data, key=str)}")
        return self.data[key]

    def __contains__(self, key) -> bool:
        return key in self.data

    def keys(self):
        return self.data.keys()

    def stack(self, site: str) -> Tensor:
        """All cached layers of ``site`` stacked on a new leading ``layer`` axis (ascending)."""
        keys = sorted((k for k in self.data if k[0] == site), key=lambda k: k[1])
        if not keys:
            raise SiteError(f"site {site!r} was not cached")
        return torch.stack([self.data[k] for k in keys])

    def layers(self, site: str) -> list[int]:
        return sorted(k[1] for k in self.data if k[0] == site)


@dataclass
class RunOutput:
    batch: Batch
    logits: Tensor | None
    cache: ActivationCache
    extra: dict = field(default_factory=dict)
    #: what ``Model.run(reduce=fn)`` returned, chunks concatenated along the rows
    reduced: Any = None


def _check_chain(calls) -> None:
    """Refuse a malformed :meth:`Model.run_chain` argument with one :class:`InterventionError`
    naming the call and the fix (before anything runs, here or on a server)."""
    import inspect
    from .errors import InterventionError
    if isinstance(calls, (str, bytes, dict)) or not isinstance(calls, Sequence) or not calls:
        raise InterventionError("run_chain takes a non-empty list of calls, each a dict of Model.run's keyword "
                                "arguments with reduce=, e.g. [dict(prompts=p, reduce=f), dict(prompts=p, reduce=g)]")
    known = set(inspect.signature(Model.run).parameters) - {"self"}
    for i, c in enumerate(calls):
        if not isinstance(c, dict):
            raise InterventionError(f"run_chain call {i} is a {type(c).__name__}, not a dict of Model.run's "
                                    f"keyword arguments")
        bad = sorted(set(c) - known)
        if bad:
            raise InterventionError(f"run_chain call {i}: unknown argument(s) {bad}; Model.run takes "
                                    f"{', '.join(sorted(known))}")
        if not callable(c.get("reduce")):
            raise InterventionError(f"run_chain call {i} has no reduce= function: every call of a chain reduces "
                                    f"its output where the model runs (fn(weights, reads, logits[, earlier]))")


class Model:
    """A loaded causal LM with an adapter and an engine.  Create with :func:`interp.load`."""

    def __init__(self, hf_model, tokenizer, engine_name: str = "hf", *, name: str = "",
                 adapter: ModelAdapter | None = None, engine_options: dict | None = None):
        from .engines import make_engine

        self.hf = hf_model
        self.tokenizer = tokenizer
        self.name = name or getattr(hf_model.config, "_name_or_path", "") or hf_model.config.model_type
        self.adapter = adapter or ModelAdapter(hf_model)
        self.engine = make_engine(engine_name, hf_model, tokenizer, self.adapter, **(engine_options or {}))
        self.engine_name = engine_name
        #: rows per forward when a call gives no ``max_rows``: None sizes chunks to memory_budget
        self.max_rows: int | None = None
        self._memory_budget: int | None = None

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (the first of a model spread over several);
        the CPU for a remote model, whose weights here are placeholders on the meta device."""
        dev = self.adapter.W_E.device
        return torch.device("cpu") if dev.type == "meta" else dev

    @property
    def memory_budget(self) -> int:
        """Bytes of activations one chunk of rows may hold (see :meth:`rows_for`): set it, or
        by default 60% of the free memory of a GPU (measured now) and 1.5 GiB on a CPU."""
        if self._memory_budget is not None:
            return self._memory_budget
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(0.6 * free)
        return int(1.5 * 2**30)

    @memory_budget.setter
    def memory_budget(self, value: int | None) -> None:
        self._memory_budget = None if value is None else int(value)

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.W_U.dtype

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    def info(self) -> dict:
        return {"name": self.name, "engine": self.engine_name, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), **self.adapter.describe(),
                "n_params": sum(p.numel() for p in self.hf.parameters()),
                "sites": {k: {"per_layer": v[0], "shape": v[1], "what": v[2]} for k, v in SITES.items()}}

    def tokenize(self, prompts: str | Sequence[str], *, padding_side: str = "left") -> Batch:
        return tokenize(self.tokenizer, prompts, padding_side=padding_side, max_length=self.adapter.n_ctx)

    def to_str_tokens(self, prompt: str) -> list[str]:
        b = self.tokenize(prompt)
        return [self.tokenizer.decode([t]) for t in b.token_ids(0)]

    def token_span(self, prompt: str, substring: str, occurrence: int = 0) -> tuple[int, int]:
        """Token range ``[start, end)`` of ``substring`` in ``prompt`` (first occurrence by default)."""
        b = self.tokenize(prompt)
        return find_span(prompt, b.offsets[0], substring, occurrence)

    def encode_target(self, target: str) -> tuple[int, bool]:
        """First token id of ``target`` and whether the target had more than one token."""
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        if not ids:
            from .errors import PromptError
            raise PromptError(f"target {target!r} tokenises to nothing: give a non-empty word "
                              f"(usually with its leading space, e.g. ' Paris')")
        return ids[0], len(ids) > 1

    @property
    def site_shapes(self) -> dict[str, tuple[int, ...]]:
        """Trailing shape (after batch, pos) of every writable site."""
        a = self.adapter
        d = (a.d_model,)
        return {"embed": d, "resid_pre": d, "resid_mid": d, "resid_post": d, "attn_out": d,
                "mlp_out": d, "mlp_post": (a.d_mlp,), "attn_z": (a.n_heads, a.d_head),
                "attn_q": (a.n_heads, a.d_head), "attn_k": (a.n_kv_heads, a.d_head), "attn_v": (a.n_kv_heads, a.d_head)}

    # ------------------------------------------------------------------ reads
    def points(self, reads: ReadSpec | Iterable[ReadSpec], layers: Iterable[int] | None = None
               ) -> list[tuple[str, int | None]]:
        """Expand site names / (site, layer) pairs into validated hook points."""
        if isinstance(reads, (str, tuple)):
            reads = [reads]
        lay = None if layers is None else [self.adapter.check_layer(l) for l in layers]
        out = []
        for r in reads:
            site, layer = (r, None) if isinstance(r, str) else r
            check_site(site)
            if site == "attn_scores":
                raise SiteError("attn_scores can be edited (blocked) but not read; read "
                                "'attn_pattern' for attention probabilities")
            if not SITES[site][0]:
                out.append((site, None))
            elif layer is None:
                out.extend((site, l) for l in (lay if lay is not None else range(self.n_layers)))
            else:
                out.append((site, self.adapter.check_layer(layer)))
        return list(dict.fromkeys(out))

    # ------------------------------------------------------------------ run
    def supports(self, capability: str) -> bool:
        """Whether this model's engine has ``capability`` (see :mod:`interp.engines.base`)."""
        return capability in self.engine.capabilities

    def compile(self, plan: InterventionPlan):
        """Validate ``plan`` against this model and compile it (see :meth:`InterventionPlan.compile`)."""
        a = self.adapter
        return plan.compile(a.n_layers, {"attn_z": a.n_heads, "mlp_post": a.d_mlp, "attn_scores": a.n_heads,
                                         "attn_q": a.n_heads, "attn_k": a.n_kv_heads, "attn_v": a.n_kv_heads},
                            self.site_shapes)

    def run(self, prompts: str | Sequence[str] | Batch | None = None, *, reads: ReadSpec | Iterable[ReadSpec] = (),
            layers: Iterable[int] | None = None, positions: Sequence[int] | None = None,
            plan: InterventionPlan | None = None, logits: str | Callable = "last",
            max_rows: int | None = None, keep_grad: bool = False, cache_device="cpu",
            skip: bool = True, progress: bool = False, reduce: Callable | None = None) -> RunOutput:
        """Run prompts (or the plan's batch) once, with edits, keeping what was asked for.

        Args:
            reads: site names (every layer, or ``layers``) or ``(site, layer)`` pairs to cache.
            positions: prompt-relative positions to keep (e.g. ``[-1]``); None keeps every
                column of the padded batch.
            plan: an :class:`InterventionPlan` built on this batch.
            logits: ``"last"`` → ``[batch, vocab]`` at each prompt's last token, ``"all"`` →
                ``[batch, pos, vocab]``, ``"none"``, or a function of the last-token logits
                applied per chunk (to reduce a large sweep on the fly); one made by
                :func:`interp.shipped.token_logits` reads a few tokens' logits, and the skipping
                path computes only those columns of the LM head.
            max_rows: rows per forward (default ``self.max_rows``, else as many as fit
                ``self.memory_budget``; see :meth:`rows_for`).  On the work-skipping path a
                chunk of rows that compute only the last ``k`` of ``W`` columns holds
                ``max_rows · W / k`` of them: the same number of token positions.
            keep_grad: keep the autograd graph: every read site's *full* tensor (``positions`` is
                ignored) is kept on the model's device with ``.grad`` enabled, and the logits are
                not detached, so ``metric(out.logits).backward()`` fills ``out.cache[p].grad``.
                Use one chunk (``max_rows`` ≥ batch size).  With ``reduce`` the reduction gets
                these reads and logits and runs its backward passes itself, where the model runs —
                the only way on a remote model, whose graph stays on the server (attribution
                patching: only its estimates travel).
            skip: when the plan has derived rows (:meth:`InterventionPlan.derive`), no reads are
                asked for, only last-token logits are needed and the engine can skip work
                (capability ``skip_work``), start each derived row at its first edit
                (:mod:`interp.skipping`; the same numbers as running every row in full).
                ``out.extra["path"]`` says which path ran.
            reduce: ``fn(weights, reads, logits)`` applied to every chunk *where the model runs* —
                on the server for a remote model — with the chunk's reads (``{(site, layer):
                tensor}``, at ``positions``), its logits (as ``logits=`` asks) and the model's
                :class:`~interp.arch.Weights` (the adapter here; the server's copy remotely).  It
                must return per-row tensors (a tensor, or dicts / lists / tuples of them, rows
                first); ``out.reduced`` holds them for the batch and the reads are not kept.
                Whatever a method computes from activations and weights (logit lens, attention
                contributions) goes here, so only its result travels.  A reduction of a one-chunk
                run may return one row for the whole batch.
        """
        batch, plan, pts = self._prepare(prompts, plan, reads, layers, logits)
        if self.supports(REMOTE):
            lg, data, reduced, extra = self.engine.run_plan(
                self, plan, pts, positions=positions, logits=logits, max_rows=max_rows, keep_grad=keep_grad,
                reduce=reduce, progress=progress)
            return RunOutput(batch, lg, ActivationCache(data, None if reduce is not None or positions is None
                                                        else list(positions)), extra, reduced)
        if (skip and reduce is None and plan.parents and not pts and not keep_grad and logits not in ("all", "none")
                and batch.padding_side == "left" and self.supports(SKIP_WORK)):
            from .skipping import run_derived
            with torch.no_grad():
                lg = run_derived(self, plan, None if logits == "last" else logits, max_rows=max_rows,
                                 progress=progress)
            if lg is not None:
                return RunOutput(batch, lg, ActivationCache({}, None), {"path": "skip"})
        rows = max_rows or self.max_rows or self.rows_for(
            batch.width, logits == "all" or not self.supports(LAST_LOGITS))
        chunks = plan.chunks(rows) if batch.size > rows else [(list(range(batch.size)), plan.flat())]
        parts_logits, parts_cache, parts_reduced = [], {p: [] for p in pts}, []
        it = chunks
        if progress and len(chunks) > 1:
            from tqdm.auto import tqdm
            it = tqdm(chunks, desc="forward", unit="chunk")
        if keep_grad and len(chunks) > 1:
            from .errors import InterventionError
            raise InterventionError(f"keep_grad=True needs one forward: {batch.size} rows exceed "
                                    f"max_rows={rows}; pass max_rows={batch.size} or fewer rows")
        ctx = torch.enable_grad() if keep_grad else torch.no_grad()
        with ctx:
            for own, sub in it:
                # a reduction reads on the model's device and returns its result on the CPU
                lg, cache = self._run_one(sub, pts, positions, logits, keep_grad,
                                          cache_device if reduce is None else None)
                n = len(own)
                full = n == sub.batch.size
                if reduce is not None:
                    parts_reduced.append(take_rows(to_cpu(reduce(self.adapter, cache, lg)), n))
                    continue
                if lg is not None:
                    parts_logits.append(lg if full else lg[:n])
                for p in pts:
                    parts_cache[p].append(cache[p] if full else cache[p][:n])
        if reduce is not None:
            return RunOutput(batch, None, ActivationCache({}, None), {"path": "plan"}, cat_rows(parts_reduced))
        if len(chunks) == 1:  # no copies: with keep_grad these are the model's own tensors
            out_logits = parts_logits[0] if parts_logits else None
            data = {p: v[0] for p, v in parts_cache.items()}
        else:
            out_logits = torch.cat(parts_logits) if parts_logits else None
            data = {p: torch.cat(v) for p, v in parts_cache.items()}
        return RunOutput(batch, out_logits, ActivationCache(data, list(positions) if positions is not None else None),
                         {"path": "plan"})

    def _prepare(self, prompts, plan, reads, layers, logits) -> tuple[Batch, InterventionPlan, list]:
        """The batch, the plan (an empty one on the prompts when none is given) and the read points of a run."""
        if plan is not None:
            batch = plan.batch  # a plan carries its own rows
        elif isinstance(prompts, Batch):
            batch = prompts
        else:
            batch = self.tokenize(prompts)
        if plan is None:
            plan = InterventionPlan(batch)
        pts = self.points(reads, layers) if reads else []
        if isinstance(logits, str) and logits not in ("last", "all", "none"):
            raise ValueError(f"logits must be 'last', 'all', 'none' or a function, not {logits!r}")
        return batch, plan, pts

    def run_chain(self, calls: Sequence[dict]) -> Any:
        """Runs that feed each other where the model runs; returns the last one's reduction.

        ``calls``: keyword arguments of :meth:`run` (``prompts`` included), each with a ``reduce``
        and one forward (``max_rows`` ≥ its rows).  Every reduction after the first takes a fourth
        argument: the list of the earlier calls' reductions.  Only the last reduction comes back:
        on a remote model the chain is one request and the earlier results never leave the server
        (attribution patching's source values).
        """
        _check_chain(calls)
        if self.supports(REMOTE):
            parts = []
            for c in calls:
                c = dict(c)
                _, plan, pts = self._prepare(c.pop("prompts", None), c.pop("plan", None), c.pop("reads", ()),
                                             c.pop("layers", None), c.get("logits", "last"))
                parts.append((plan, pts, c))
            return self.engine.run_chain(self, parts)
        prior: list = []
        for i, c in enumerate(calls):
            c = dict(c)
            fn = c.pop("reduce")
            c["reduce"] = fn if i == 0 else (lambda w, reads, lg, fn=fn: fn(w, reads, lg, list(prior)))
            prior.append(self.run(**c).reduced)
        return prior[-1]

    def make_hooks(self, compiled, n_rows: int, pts=(), cols: Tensor | None = None, *, keep_grad: bool = False,
                   cache_device="cpu", store: dict | None = None, taps: dict | None = None) -> dict:
        """Hook functions ``{(site, layer): fn}`` that apply ``compiled`` and keep the reads.

        ``pts``: points to read into ``store`` (``head_out`` is read as ``attn_z``), at the
        columns ``cols`` ``[rows, positions]`` (None: all); ``taps``: ``{point: fn(x)}`` called
        with each point's tensor *before* the plan's edits there (the work-skipping path records
        states and copy sources with them).  A ``resid_mid`` write is compiled into an
        ``attn_out`` edit (``attn_out += new_mid − old_mid``), exact for untouched entries,
        because no engine can write the residual sum itself.
        """
        store = {} if store is None else store
        taps = taps or {}
        hooks: dict = {}
        edit_points = set(compiled.points)

        def keep(point, x):
            if x.shape[0] != n_rows:
                raise RuntimeError("engine returned a tensor without the batch axis")
            if keep_grad:
                store[point] = keep_for_grad(x)
                return
            y = gather(point[0], x, cols)  # attn_pattern: [b, n, head, key]
            store[point] = y.detach().to(cache_device) if cache_device else y.detach()

        kept = {(s if s != "head_out" else "attn_z", l) for s, l in pts}  # head_out is read as z
        points, mid = hook_points(kept, edit_points)
        state: dict = {}
        for point in points | set(taps):
            def fn(x, point=point, tap=taps.get(point)):
                if tap is not None:
                    tap(x)
                return edit_point(point[0], point[1], x, compiled.apply, mid, state,
                                  (lambda v: keep(point, v)) if point in kept else None)
            hooks[point] = fn
        for p in hooks:
            if p[0] not in PRIMITIVE_SITES:
                raise SiteError(f"internal: derived site {p} reached the engine")
        return hooks

    def _run_one(self, plan: InterventionPlan, pts, positions, logits, keep_grad, cache_device):
        b = plan.batch
        a = self.adapter
        compiled = self.compile(plan)
        dev = self.device
        if positions is not None:
            cols = torch.tensor([[b.abs_pos(r, p) for p in positions] for r in range(b.size)], device=dev)
        else:
            cols = None
        store: dict = {}
        hooks = self.make_hooks(compiled, b.size, pts, cols, keep_grad=keep_grad, cache_device=cache_device,
                                store=store)
        ids, mask = b.input_ids.to(dev), b.attention_mask.to(dev)
        last_only = logits != "all" and b.padding_side == "left"
        out = self.engine.forward(ids, mask, b.position_ids.to(dev), hooks, last_only=last_only)
        # derived reads
        for site, layer in pts:
            if site == "head_out":
                store[(site, layer)] = head_out(store[("attn_z", layer)], a.W_O(layer))
                if ("attn_z", layer) not in pts:
                    del store[("attn_z", layer)]
        if logits == "none":
            lg = None
        elif logits == "all":
            lg = out
        else:
            last = b.last_positions().to(out.device) if out.shape[1] == b.width else \
                torch.zeros(b.size, dtype=torch.long, device=out.device)  # engine kept the last column only
            lg = out[torch.arange(b.size, device=out.device), last]
            if callable(logits):
                lg = logits(lg)
        if lg is not None and not keep_grad:
            lg = lg.detach()
        return lg, store

    def rows_for(self, width: int, all_logits: bool = False) -> int:
        """Rows per chunk that fit :attr:`memory_budget` for prompts of ``width`` tokens.

        Estimate of the live activations of one row during a forward: a few residual-width
        tensors and the MLP hidden tensors per position, the attention scores and probabilities
        (heads × width²), and the logits (vocab per kept position).
        """
        a = self.adapter
        item = torch.finfo(self.dtype).bits // 8
        per_pos = 8 * a.d_model + 4 * a.d_mlp + 4 * a.n_heads * width
        per_row = item * (width * per_pos + (width if all_logits else 1) * a.vocab_size * 2)
        cap = 512 if self.device.type == "cpu" else 8192   # bigger CPU chunks gain nothing
        return int(max(1, min(cap, self.memory_budget // max(per_row, 1))))

    def compute(self, fn: Callable, *args):
        """``fn(weights, *args)`` where the weights are: the adapter here, the server's copy for a
        remote model (one request; tensors come back on the CPU).  For computations on the weights
        alone — decoding neurons through the unembedding, searching value vectors — so that only
        their result travels, never the weights.  ``fn`` must use only torch and ``weights``."""
        if self.supports(REMOTE):
            return self.engine.compute(fn, *args)
        with torch.no_grad():
            return fn(self.adapter, *args)

    def generate(self, prompts: str | Sequence[str], *, max_new_tokens: int = 20) -> Tensor:
        """Greedy continuations of the (left-padded) prompts: ``[batch, new]`` token ids, the
        prompts left out.  Runs where the model runs (one request for a remote model)."""
        b = self.tokenize(prompts)
        tok = self.tokenizer
        pad = tok.pad_token_id or tok.eos_token_id
        if self.supports(REMOTE):
            return self.engine.generate(b, max_new_tokens, pad)
        with torch.no_grad():
            out = self.hf.generate(input_ids=b.input_ids.to(self.device), attention_mask=b.attention_mask.to(self.device),
                                   max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        return out[:, b.width:].cpu()

    # ------------------------------------------------------------------ helpers
    def next_token_probs(self, prompts: str | Sequence[str]) -> Float[Tensor, "batch vocab"]:
        return self.run(prompts).logits.float().softmax(-1)

    def __repr__(self) -> str:
        d = self.adapter
        return (f"Model({self.name!r}, engine={self.engine_name!r}, {d.model_type}, layers={d.n_layers}, "
                f"d_model={d.d_model}, heads={d.n_heads}/{d.n_kv_heads}, device={self.device})")


def check_engine(name: str) -> str:
    from .engines import ENGINES
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    return name
