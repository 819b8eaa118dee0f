"""Remote execution: the same analysis on NDIF, through nnsight's ``remote=``.

Design note
-----------
``interp.load(name, engine="nnsight", remote=...)`` picks where the model runs:

* ``False`` — here (the ordinary nnsight engine: Python hooks inside each trace);
* ``True`` — on the NDIF servers (https://ndif.us): the weights are never downloaded (nnsight
  builds the model on the meta device), every forward is a request carrying its trace;
* ``"local"`` — the remote path without a server: each request is serialised exactly as for
  NDIF, deserialised with interp hidden (as on the server) and run on a local copy of the model,
  while the model interp sees is a weightless meta copy — a method that touched a weight locally
  would fail here as it would against NDIF.  This is how the remote path is tested offline.

What a request carries.  The server has torch, transformers, nnsight and einops, not interp.  So
no interp hook closure can run there: ``Model.run`` hands the engine the *compiled plan as data*
(edit index tensors and values, points to read, columns to keep) and the engine sends it with
:func:`interp.shipped.run_chunk`, the torch-only program that applies it inside the trace.  The
modules in :data:`SHIPPED_MODULES` (the core's, and each method module that declares with
:func:`ships_with_requests` that its reductions run there) are registered for pickling by value
(``nnsight.register``) and nothing else of interp is: a trace body that needed any other interp
module would fail to deserialise on the server — and fails the same way under ``remote="local"``, which also blocks
every import of ``interp`` / ``probes`` during deserialisation (an editable or site-packages
install would otherwise let the simulated server import them; ``tests/test_remote.py`` checks
this).

As few requests as possible.  The chunks of rows of one ``Model.run`` (sized to memory, as
locally) go out as one nnsight ``session`` per ``request_rows`` rows, each chunk one trace in it.
Only what was asked for comes back: a reduced metric per row (``logits=fn``), the kept columns
of the reads, or a method's own reduction (``Model.run(reduce=...)``), and computations on the
weights alone run as a session without a forward (``Model.compute``).  Runs that feed each other
(``Model.run_chain``: attribution patching's source run, then its base run with the backward
passes) are one request whose earlier results stay on the server.  :class:`RequestStats`
counts requests, rows, bytes sent and bytes returned (the result as the server serialises it,
before compression).

Failures.  A request that fails in transport (connection, time-out, a server error) is retried
with exponential backoff (``retries``, ``backoff``); a sweep killed between requests resumes
from its last finished request when the session has a request log (:meth:`RemoteSession.log_to`,
a :class:`interp.sweep.Checkpoint`: finished requests are read back, the rest are sent).
``remote=True`` checks for an API key (``NDIF_API_KEY``), the host (``NDIF_HOST``, default
``https://api.ndif.us``) and that the host serves the model before anything is loaded
(:func:`interp.loading.ndif_preflight`; the remote models are built by
:func:`interp.loading.load_remote` and :func:`interp.loading.simulate_remote`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import RemoteRequestError, SettingError
from .shipped import cat_rows, compute_on, generation_edits, run_chunk, take_rows, to_device

#: the interp modules whose code runs on the server, shipped by value with every request: the core
#: ones here; each method module whose reductions run where the model runs adds itself
#: (:func:`ships_with_requests`), so the core names no method
SHIPPED_MODULES = {"interp.shipped", "interp.arch", "interp.errors"}


def ships_with_requests(module: str) -> None:
    """Declare that code of ``module`` (a method's reduction or computation on the weights) runs
    where the model runs: it is pickled by value into every remote request.  A method module calls
    this at import with its ``__name__``; a module that does not, and whose code a request needs,
    fails on the server (and under ``remote="local"``) with ``No module named 'interp'``."""
    SHIPPED_MODULES.add(module)


#: packages that exist on the client only (blocked while ``remote="local"`` deserialises)
CLIENT_PACKAGES = ("interp", "probes")


def check_remote(remote) -> bool | str:
    """``False`` / ``"local"`` / ``True`` (also written ``"ndif"``), or a :class:`SettingError`."""
    if remote is None or remote is False or (isinstance(remote, str) and remote.lower() in ("", "false", "no")):
        return False
    if remote is True or (isinstance(remote, str) and remote.lower() in ("ndif", "true", "remote")):
        return True
    if isinstance(remote, str) and remote.lower() == "local":
        return "local"
    raise SettingError(f"remote must be False (run here), 'local' (the remote path simulated here) or True / "
                       f"'ndif' (run on NDIF), not {remote!r}")


# ----------------------------------------------------------------------------- shipping
def prepare_shipping() -> None:
    """Register :data:`SHIPPED_MODULES` (and no other interp module) for pickling by value.

    nnsight's ``pull_env`` registers every package importable from outside site-packages (an
    interp checkout on ``PYTHONPATH`` would be shipped whole); interp is taken back out, so what a
    request needs from interp is the same however interp was installed.
    """
    import nnsight
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
    from nnsight.ndif import pull_env

    pull_env()
    for name in list(_PICKLE_BY_VALUE_MODULES):
        if name.split(".")[0] in CLIENT_PACKAGES and name not in SHIPPED_MODULES:
            _PICKLE_BY_VALUE_MODULES.discard(name)
    for name in SHIPPED_MODULES:
        nnsight.register(sys.modules[name] if name in sys.modules else __import__(name, fromlist=["_"]))


class _ClientOnly:
    """A meta-path finder that refuses interp's packages, as an NDIF server would."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in CLIENT_PACKAGES:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the server)", name=name)
        return None


@functools.lru_cache(maxsize=None)
def _local_backend_class():
    from nnsight.intervention.backends.local import LocalSimulationBackend

    class LocalBackend(LocalSimulationBackend):
        """nnsight's serverless dry run, strict about interp: its modules are hidden *and* cannot be
        re-imported while the request is deserialised.  Records the payload size."""

        def __init__(self, model, stats: "RequestStats"):
            super().__init__(model)
            self.stats = stats

        def __call__(self, tracer):
            from nnsight.schema import request as request_module

            serialize = request_module.RequestModel.serialize
            stats = self.stats

            def measured(tracer, compress=False):
                blob = serialize(tracer, compress=compress)
                stats.bytes_sent += len(blob)
                return blob
            request_module.RequestModel.serialize = measured
            try:
                return super().__call__(tracer)
            finally:
                request_module.RequestModel.serialize = serialize

        def _hide_local_modules(self):
            hidden = super()._hide_local_modules()
            for name in list(sys.modules):  # an interp module outside sys.path (editable install)
                if name.split(".")[0] in CLIENT_PACKAGES:
                    hidden["modules"][name] = sys.modules.pop(name)
            self._finder = _ClientOnly()
            sys.meta_path.insert(0, self._finder)
            return hidden

        def _restore(self, hidden):
            sys.meta_path.remove(self._finder)
            super()._restore(hidden)

    return LocalBackend


@functools.lru_cache(maxsize=None)
def _ndif_backend_class():
    from nnsight.intervention.backends.remote import RemoteBackend

    class NdifBackend(RemoteBackend):
        """nnsight's NDIF backend, non-blocking (submit, then poll until a deadline), recording
        the payload and result sizes."""

        def __init__(self, model_key, stats: "RequestStats"):
            super().__init__(model_key, blocking=False)
            self.stats = stats

        def _serialize(self, tracer):
            blob = super()._serialize(tracer)
            self.stats.bytes_sent += len(blob)
            return blob

        def finalize(self, content: bytes):
            self.stats.bytes_on_wire += len(content)
            return super().finalize(content)

        def wait(self, timeout: float | None, interval: float = 1.0) -> dict:
            start = time.monotonic()
            while True:
                result = self.poll()
                if result is not None:
                    return result
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"NDIF request {self.job_id} did not finish within {timeout:.0f} s")
                time.sleep(interval)

    return NdifBackend


def _transient(e: BaseException) -> bool:
    """Whether a failed request is worth sending again (transport, time-out, server side)."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    mod = type(e).__module__ or ""
    return (type(e).__name__ == "RemoteError" or mod.startswith(("httpx", "httpcore", "websocket"))
            or isinstance(e, OSError) and not isinstance(e, (ModuleNotFoundError, FileNotFoundError)))


def serialized_size(obj) -> int:
    """Bytes of ``obj`` as the server returns results (``torch.save``, before compression)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


# ----------------------------------------------------------------------------- requests
@dataclass
class RequestStats:
    """What the remote path sent and got back (``model.engine.session.stats``)."""

    requests: int = 0       # requests that completed (one nnsight session each)
    retries: int = 0        # requests sent again after a transient failure
    resumed: int = 0        # requests read back from the request log instead of sent
    traces: int = 0         # forwards (chunks of rows), all requests together
    rows: int = 0           # rows of those forwards
    bytes_sent: int = 0     # serialised request payloads
    bytes_returned: int = 0  # results as the server serialises them (torch.save, uncompressed)
    bytes_on_wire: int = 0  # NDIF only: result bytes downloaded (compressed)
    seconds: float = 0.0    # wall time of the requests

    def reset(self) -> None:
        """Set every count back to zero (before the run to be measured)."""
        for k, v in RequestStats().__dict__.items():
            setattr(self, k, v)

    def as_dict(self) -> dict:
        """The counts as a JSON-able dict."""
        return dict(self.__dict__)


@dataclass
class RequestLog:
    """Finished requests of a sweep, so a killed client resumes from the last finished one.

    A :class:`interp.sweep.Checkpoint` whose items are request digests (the request's data and
    code, see :func:`digest`); each result is a ``torch.save`` file written atomically before its
    log line.
    """

    directory: Path
    model: str
    checkpoint: Any = field(init=False)

    def __post_init__(self):
        from .sweep import Checkpoint
        self.directory = Path(self.directory)
        self.checkpoint = Checkpoint(self.directory, {"kind": "remote requests", "model": self.model})

    def get(self, key: str):
        """The logged result of the request ``key``, or None when it has not finished."""
        rec = self.checkpoint.get(key)
        if rec is None:
            return None
        path = self.directory / rec["file"]
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def add(self, key: str, result) -> None:
        """Log the finished request ``key`` with its result (written atomically)."""
        from .sweep import write_atomic
        buf = io.BytesIO()
        torch.save(result, buf)
        name = f"request-{key[:24]}.pt"
        write_atomic(self.directory / name, buf.getvalue())
        self.checkpoint.add(key, {"file": name})


def digest(obj) -> str:
    """A stable digest of a request's data and code (tensors by value, functions by their code
    and closure), so a resumed sweep recognises the requests it already finished."""
    h = hashlib.sha256()

    def feed(x):
        if torch.is_tensor(x):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"D")
            for k in sorted(x, key=repr):
                feed(k)
                feed(x[k])
        elif isinstance(x, (list, tuple, set, frozenset)):
            h.update(b"L" if not isinstance(x, (set, frozenset)) else b"S")
            for v in (sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x):
                feed(v)
        elif callable(x) and hasattr(x, "__code__"):
            code = x.__code__
            h.update(code.co_code)
            feed([c for c in code.co_consts if not hasattr(c, "co_code")])
            feed([c.co_code for c in code.co_consts if hasattr(c, "co_code")])
            feed(list(code.co_names))
            feed([c.cell_contents for c in (x.__closure__ or ())])
            feed(list(x.__defaults__ or ()))
        elif hasattr(x, "path") and hasattr(x, "_module"):  # an nnsight envoy
            h.update(f"E{x.path}".encode())
        else:
            h.update(repr(x).encode())
    feed(obj)
    return h.hexdigest()


# The two request bodies below are shipped as their source, unparsed from the syntax tree: a
# statement spread over several lines (or a comment, a blank line) inside the ``with`` would move
# the line numbers the inner trace is found by on the server.  Keep them one line per statement.
def _run_session(nm, backend, jobs, w, lm_head):
    """One request: every job (a chunk of rows) one trace of one session, its program shipped; a
    chained job's reduction sees the earlier jobs' reductions, and a job not to return stays here."""
    import nnsight

    outs = None
    with nm.session(backend=backend):
        dev = w.W_E.device
        outs = []
        done = []
        for job in jobs:
            with torch.set_grad_enabled(job["grad"]):
                with nm.trace(**to_device(job["inputs"], dev)):
                    out = run_chunk(job["steps"], job, w, lm_head, done)
            done.append(out["reduced"])
            outs.append(out if job["ret"] else None)
        nnsight.save(outs)
    return outs


def _generate_session(nm, backend, inputs, kwargs, steps, vedits, shape, w):
    """One request: greedy generation, the value-vector edits applied at every step."""
    import nnsight

    ids = None
    with nm.session(backend=backend):
        dev = w.W_E.device
        with nm.generate(**to_device(inputs, dev), **kwargs) as tracer:
            generation_edits(tracer, steps, w, vedits, shape, kwargs["max_new_tokens"])
            ids = tracer.result
        nnsight.save(ids)
    return ids


def _compute_session(nm, backend, fn, args, w):
    """One request without a forward: ``fn(w, *args)`` on the server's weights."""
    import nnsight

    result = None
    with nm.session(backend=backend):
        result = compute_on(fn, w, args)
        nnsight.save(result)
    return result


class RemoteSession:
    """The remote side of an nnsight engine: requests, retries, statistics, the request log.

    Settings (attributes): ``retries`` (3) and ``backoff`` (1 s, doubling) for failed requests,
    ``timeout`` (None: wait as long as NDIF takes) for one NDIF request, ``request_rows`` (4096)
    rows per request — the chunks of one run are grouped up to this many rows.
    """

    def __init__(self, engine, mode, *, retries: int = 3, backoff: float = 1.0, timeout: float | None = None,
                 request_rows: int = 4096):
        self.engine = engine
        self.mode = mode
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.request_rows = request_rows
        self.stats = RequestStats()
        self.log: RequestLog | None = None
        self.sleep = time.sleep
        self._weights = None
        #: value-vector edits every request carries (see :meth:`editing`)
        self.vedits: dict = {}

    # -------------------------------------------------------------- setup
    def log_to(self, directory: str | Path | None) -> None:
        """Keep finished requests in ``directory`` (None: stop), so a killed sweep resumes."""
        self.log = None if directory is None else RequestLog(Path(directory), getattr(self.engine, "model_name", ""))

    @contextmanager
    def editing(self, edits):
        """Within the block, every request runs as if value vectors had been edited:
        ``edits`` = ``[(layer, neuron, "add" | "set", value [d_model])]``.  The server's weights are
        shared and never written; the edit travels with each request and is applied to the MLP
        output (:func:`interp.shipped.edited_weights`)."""
        by_layer: dict = {}
        for layer, neuron, kind, value in edits:
            by_layer.setdefault(int(layer), []).append((int(neuron), kind == "set", torch.as_tensor(value).float()))
        old = self.vedits
        self.vedits = {l: (torch.tensor([e[0] for e in es]), torch.tensor([e[1] for e in es]),
                           torch.stack([e[2] for e in es])) for l, es in by_layer.items()}
        try:
            yield
        finally:
            self.vedits = old

    def _vedit_points(self) -> set:
        return {(s, l) for l in self.vedits for s in ("mlp_post", "mlp_out")}

    @property
    def weights(self):
        """The server's :class:`interp.arch.Weights`: the adapter's modules, as the server's envoys."""
        if self._weights is None:
            paths = {id(m): name for name, m in self.engine.hf.named_modules()}
            self._weights = self.engine.a.over(lambda m: self.engine.envoy(paths[id(m)]))
        return self._weights

    def backend(self):
        """The nnsight backend a request is sent through: the strict local simulation or NDIF."""
        if self.mode == "local":
            return _local_backend_class()(self.engine.nm, self.stats)
        return _ndif_backend_class()(self.engine.nm.to_model_key(), self.stats)

    # -------------------------------------------------------------- sending
    def send(self, body: Callable, *args, key_data=None):
        """Run ``body(nm, backend, *args)`` as one request: from the log if it finished before,
        else sent, retried after a transient failure with exponential backoff."""
        key = None
        if self.log is not None:
            key = digest(key_data if key_data is not None else args)
            done = self.log.get(key)
            if done is not None:
                self.stats.resumed += 1
                return done
        prepare_shipping()
        start = time.monotonic()
        for attempt in range(self.retries + 1):
            backend = self.backend()
            try:
                result = body(self.engine.nm, backend, *args)
                if result is None and hasattr(backend, "wait"):  # NDIF: submitted, not waited for
                    result = next(iter(backend.wait(self.timeout).values()))
                break
            except Exception as e:  # noqa: BLE001 - sorted into transient (retry) and not
                if not _transient(e):
                    raise
                if attempt == self.retries:
                    raise RemoteRequestError(
                        f"the remote request failed {attempt + 1} times ({type(e).__name__}: {e}); "
                        f"check the host ({self._host()}) and try again — a sweep with a request "
                        f"log resumes from its last finished request") from e
                self.stats.retries += 1
                self.sleep(self.backoff * 2 ** attempt)
        self.stats.requests += 1
        self.stats.seconds += time.monotonic() - start
        self.stats.bytes_returned += serialized_size(result)
        if key is not None:
            self.log.add(key, result)
        return result

    def _host(self) -> str:
        if self.mode == "local":
            return "local simulation"
        from nnsight import CONFIG
        return CONFIG.API.HOST

    # -------------------------------------------------------------- runs
    def run_plan(self, model, plan, pts, *, positions, logits, max_rows, keep_grad, reduce, progress):
        """``Model.run`` on the remote path: the plan's chunks, grouped into requests.  Returns
        ``(logits, reads {point: tensor}, reduced, extra)``, which ``Model.run`` wraps."""
        from .errors import EngineError

        if keep_grad and reduce is None:
            raise EngineError("keep_grad=True hands the autograd graph to the caller; a remote model's graph "
                              "stays on the server — pass reduce=fn as well (Model.run): it gets the reads with "
                              "their graph and runs its backward passes there")
        chunks = self._chunks(model, plan, logits, max_rows, "keep_grad=True" if keep_grad else None)
        jobs = [self._job(model, sub, pts, positions, logits, reduce, keep_grad) for _, sub in chunks]
        groups, cur, n = [], [], 0
        for job in jobs:
            if cur and n + job["rows"] > self.request_rows:
                groups.append(cur)
                cur, n = [], 0
            cur.append(job)
            n += job["rows"]
        groups.append(cur)
        it = groups
        if progress and len(groups) > 1:
            from tqdm.auto import tqdm
            it = tqdm(groups, desc="requests", unit="request")
        w, lm_head = self.weights, self._lm_head()
        outs = []
        for g in it:
            outs += self.send(_run_session, g, w, lm_head, key_data=[_job_key(j) for j in g])
            self.stats.traces += len(g)
            self.stats.rows += sum(j["rows"] for j in g)
        parts_logits, parts_cache, parts_reduced = [], {p: [] for p in pts}, []
        for (own, _), out in zip(chunks, outs):
            k = len(own)
            if reduce is not None:
                parts_reduced.append(take_rows(out["reduced"], k))
                continue
            if out["logits"] is not None:
                parts_logits.append(out["logits"][:k])
            for p in pts:
                parts_cache[p].append(out["reads"][p][:k])
        extra = {"path": "remote", "requests": len(groups)}
        if reduce is not None:
            return None, {}, cat_rows(parts_reduced), extra
        data = {p: torch.cat(v) for p, v in parts_cache.items()}
        return torch.cat(parts_logits) if parts_logits else None, data, None, extra

    def run_chain(self, model, parts) -> Any:
        """:meth:`interp.model.Model.run_chain` on the remote path: ``parts`` = ``[(plan, points,
        run keywords)]``, each one trace of a single request; only the last reduction comes back."""
        jobs = []
        for i, (plan, pts, kw) in enumerate(parts):
            logits, keep_grad = kw.get("logits", "last"), kw.get("keep_grad", False)
            (own, sub), = self._chunks(model, plan, logits, kw.get("max_rows"), "a chained run")
            job = self._job(model, sub, pts, kw.get("positions"), logits, kw["reduce"], keep_grad)
            job["chain"], job["ret"] = i > 0, i == len(parts) - 1
            jobs.append(job)
        out = self.send(_run_session, jobs, self.weights, self._lm_head(), key_data=[_job_key(j) for j in jobs])[-1]
        self.stats.traces += len(jobs)
        self.stats.rows += sum(j["rows"] for j in jobs)
        return take_rows(out["reduced"], len(own))

    def _chunks(self, model, plan, logits, max_rows, one: str | None) -> list:
        """The plan's chunks of rows (sized as ``Model.run`` sizes them); ``one`` names what needs a
        single forward, refused with a clear error when the rows do not fit one."""
        b = plan.batch
        rows = max_rows or model.max_rows or model.rows_for(b.width, logits == "all")
        chunks = plan.chunks(rows) if b.size > rows else [(list(range(b.size)), plan.flat())]
        if one and len(chunks) > 1:
            from .errors import InterventionError
            raise InterventionError(f"{one} needs one forward: {b.size} rows exceed max_rows={rows}; "
                                    f"pass max_rows={b.size} or fewer rows")
        return chunks

    def _lm_head(self):
        paths = {id(m): name for name, m in self.engine.hf.named_modules()}
        return self.engine.envoy(paths[id(self.engine.a.lm_head)])

    def _job(self, model, sub, pts, positions, logits, reduce, keep_grad=False) -> dict:
        """One chunk of rows as data: tokens, compiled edits, points to touch and keep."""
        from .shipped import hook_points

        bb = sub.batch
        compiled = model.compile(sub)
        kept = {("attn_z" if s == "head_out" else s, l) for s, l in pts}
        points, mid = hook_points(kept, set(compiled.points))
        points |= self._vedit_points()
        cols = None if positions is None else torch.tensor(
            [[bb.abs_pos(r, p) for p in positions] for r in range(bb.size)])
        last_only = logits != "all" and bb.padding_side == "left"
        a = self.engine.a
        inputs = {"input_ids": bb.input_ids, "attention_mask": bb.attention_mask,
                  "position_ids": bb.position_ids, "use_cache": False, **self.engine._extra(last_only)}
        return {"inputs": inputs, "rows": bb.size, "steps": self.engine.steps(points),
                "edits": {p: [g.astuple() for g in gs] for p, gs in compiled.groups.items()},
                "n_heads": a.n_heads, "d_head": a.d_head, "mid": mid, "keep": kept, "cols": cols,
                "head_out": sorted({l for s, l in pts if s == "head_out"}), "logits": logits,
                "last": bb.last_positions(), "reduce": reduce, "grad": keep_grad, "vedits": self.vedits,
                "chain": False, "ret": True}

    def generate(self, batch, max_new_tokens: int, pad_token_id: int):
        """Greedy continuations of a left-padded batch (``[rows, new]`` token ids), one request."""
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        kwargs = {"max_new_tokens": int(max_new_tokens), "do_sample": False, "pad_token_id": int(pad_token_id)}
        a = self.engine.a
        steps = self.engine.steps(self._vedit_points())
        ids = self.send(_generate_session, inputs, kwargs, steps, self.vedits, (a.n_heads, a.d_head), self.weights,
                        key_data=[inputs, kwargs, self.vedits, "generate"])
        return ids[:, batch.width:]

    def compute(self, fn, *args):
        """``fn(weights, *args)`` as one request without a forward."""
        return self.send(_compute_session, fn, args, self.weights, key_data=[fn, args])


def _job_key(job: dict) -> dict:
    return {k: v for k, v in job.items() if k != "steps"} | {"steps": [s[:2] + (s[3],) for s in job["steps"]]}


def stats(model) -> RequestStats:
    """The request statistics of a remote model (``remote="local"`` or ``True``)."""
    session = getattr(model.engine, "session", None)
    if session is None:
        raise SettingError("this model runs here (remote=False): it sends no requests")
    return session.stats
