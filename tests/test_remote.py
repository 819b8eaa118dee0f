"""The remote path (issue 11): nnsight's remote execution, tested offline with ``remote="local"``.

``remote="local"`` serialises every request as for NDIF, deserialises it with interp hidden and
its imports blocked (as on a server without interp), and runs it on a local copy of the model,
while interp itself holds a weightless meta copy — a method that touched a weight locally fails.
Every method family must give the numbers of ``engine="hf"`` (≤ 1e-4) through this path.

Tiny random models check the machinery (plans, reads, retries, the request log, what is
shipped); the default model checks every method family through the Python API and the CLI.
"""

from __future__ import annotations

import json

import pytest
import torch

import interp
from conftest import cached_loads, tiny
from interp.errors import (EngineError, RemoteConfigError, RemoteRequestError, RemoteUnavailableError,
                           SettingError)
from interp.interventions import InterventionPlan
from interp.loading import simulate_remote
from interp.remote import stats

PROMPT = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
SUBJECT = "The Eiffel Tower"
TOL = 1e-4


def _close(a, b, tol=TOL):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0, equal_nan=True), float((a - b).abs().nan_to_num().max())


def _twin(arch="llama"):
    """A tiny model and the same weights behind the remote path."""
    m = tiny(arch)
    return m, simulate_remote(m.hf, m.tokenizer, m.name)


def _plan(m):
    """Every kind of edit: set / add / scale (units too), copies from another row, a resid_mid write,
    edge blocks (all heads and one head), queries / keys / values."""
    b = m.tokenize([PROMPT] * 5)
    d = m.adapter.d_model
    g = torch.Generator().manual_seed(0)
    plan = InterventionPlan(b)
    plan.set("resid_mid", 1, 1, [-1], torch.randn(d, generator=g))
    plan.add("embed", None, 2, [0, 1], torch.randn(d, generator=g))
    plan.block(2, 2, [-1], [0, 1, 2])
    plan.block(1, 3, [-1], [1], head=1)
    plan.set("resid_pre", 2, 3, [2, 3], source_row=0)
    plan.scale("mlp_post", 1, 4, [-1], 0.0, unit=5)
    plan.set("attn_z", 0, 4, [-2], torch.randn(m.adapter.d_head, generator=g), unit=2)
    plan.set("attn_q", 1, 4, [-1], torch.randn(m.adapter.d_head, generator=g), unit=1)
    plan.add("attn_k", 1, 4, [0, 1], torch.randn(m.adapter.d_head, generator=g), unit=0)
    plan.scale("attn_v", 0, 3, [-1], 2.0)
    return plan


# ---------------------------------------------------------------------- the machinery (tiny models)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_plans_reads_and_logits_match_hf(arch):
    m, rm = _twin(arch)
    assert rm.hf.lm_head.weight.is_meta and not rm.supports("skip_work")  # the client holds no weights
    reads = ["resid_post", ("head_out", 1), ("attn_pattern", 2), ("resid_mid", 0), ("mlp_post", 1), ("attn_q", 1),
             ("attn_k", 1), ("attn_v", 2)]
    for kw in ({"positions": [-1]}, {"positions": None}):
        a = m.run([PROMPT, "Rome is the capital of"], reads=reads, **kw)
        b = rm.run([PROMPT, "Rome is the capital of"], reads=reads, **kw)
        _close(a.logits, b.logits, 1e-5)
        assert set(a.cache.keys()) == set(b.cache.keys())
        for k in a.cache.keys():
            _close(a.cache[k], b.cache[k], 1e-5)
    plan = _plan(m)
    for logits in ("last", "all", lambda lg: lg.float().softmax(-1)[:, 100]):
        _close(m.run(plan=plan, logits=logits, skip=False).logits, rm.run(plan=plan, logits=logits).logits, 1e-5)


def test_one_request_per_group_of_chunks_and_only_reduced_values_come_back():
    m, rm = _twin()
    plan = _plan(m)
    fn = lambda lg: lg.float().softmax(-1)[:, 100]  # noqa: E731
    st = stats(rm)
    st.reset()
    out = rm.run(plan=plan, logits=fn, max_rows=2)  # 3 chunks of rows (+ the rows they copy from)
    assert st.requests == 1 and st.traces == 3 and out.extra["requests"] == 1
    # a view of the softmax would carry all of it: what returns is the rows' numbers and little else
    assert st.bytes_returned < 5_000 and st.bytes_sent > 10_000
    rm.engine.session.request_rows = 3
    st.reset()
    again = rm.run(plan=plan, logits=fn, max_rows=2)
    assert st.requests == 3 and torch.equal(again.logits, out.logits)
    _close(out.logits, m.run(plan=plan, logits=fn, skip=False).logits, 1e-5)


def test_a_trace_body_that_needs_interp_fails_as_it_would_on_the_server():
    """remote="local" really ships the request: code the server cannot import is refused."""
    from interp.windows import window_layers  # an interp module that is not shipped

    m, rm = _twin()
    needs_interp = lambda w, reads, lg: torch.tensor(window_layers(1, 3, 3))[None]  # noqa: E731
    assert m.run(PROMPT, logits="none", reduce=needs_interp).reduced.tolist() == [[0, 1, 2]]
    with pytest.raises(ModuleNotFoundError, match="No module named 'interp'"):
        rm.run(PROMPT, logits="none", reduce=needs_interp)
    # and interp is back in place afterwards
    assert rm.run(PROMPT, logits=lambda lg: lg.argmax(-1)).logits.shape == (1,)


def test_a_run_chain_is_one_request_and_only_its_last_reduction_returns():
    m, rm = _twin()
    big = torch.randn(1, 4096, generator=torch.Generator().manual_seed(0))
    calls = [dict(prompts=PROMPT, reads=[("resid_post", 1)], logits="none",
                  reduce=lambda w, reads, lg: {"h": reads[("resid_post", 1)], "big": big}),
             dict(prompts="Rome is the capital of", logits="last",
                  reduce=lambda w, reads, lg, prior: (lg[:, :5].float() + prior[0]["h"][:, -1, :5] + prior[0]["big"].sum()))]
    st = stats(rm)
    st.reset()
    a, b = m.run_chain(calls), rm.run_chain(calls)
    _close(a, b, 1e-5)
    assert st.requests == 1 and st.traces == 2 and st.bytes_returned < 4096 * 4  # the first result stayed there


def test_a_malformed_run_chain_is_refused_before_anything_runs():
    from interp.errors import InterventionError

    m, rm = _twin()
    st = stats(rm)
    ok = dict(prompts=PROMPT, logits="none", reduce=lambda w, reads, lg: lg)
    for x in (m, rm):
        st.reset()
        for calls, match in [([], "non-empty list"), (ok, "non-empty list"), ("abc", "non-empty list"),
                             ([ok, "x"], "call 1 is a str"), ([dict(ok, reduc=1)], r"unknown argument\(s\) \['reduc'\]"),
                             ([ok, dict(prompts=PROMPT)], "call 1 has no reduce="),
                             ([dict(ok, reduce=3)], "call 0 has no reduce=")]:
            with pytest.raises(InterventionError, match=match):
                x.run_chain(calls)
        assert st.requests == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_attribution_patching_runs_its_backward_passes_on_the_server(arch):
    """AtP* on a remote model: the gradients, GradDrop's extra backward passes and the QK fix's
    patterns are computed where the model runs; only the estimates come back."""
    from interp.mediation.attribution import attribution_patching

    m, rm = _twin(arch)
    kw = dict(sites=["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head", "neuron"],
              heads=[0, 2], neurons=[1, 5], answer=" Paris", wrong=" Rome")
    for method in ("atp", "atp+qk", "atp*"):
        a, b = (attribution_patching(x, PROMPT, CORRUPT, method=method, **kw) for x in (m, rm))
        for s in a.sites:
            _close(a.grid(s), b.grid(s), 1e-6)
        _close([a.clean_metric, a.corrupt_metric], [b.clean_metric, b.corrupt_metric], 1e-6)
    with pytest.raises(EngineError, match="graph stays on the server"):  # the graph never comes back
        rm.run(PROMPT, reads=["resid_pre"], keep_grad=True)


def test_every_method_module_is_shipped_and_needed(monkeypatch):
    """Leaving a method's module out of the shipped set breaks that method remotely (and only there)."""
    import interp.remote as remote
    from interp.lens import logit_lens

    m, rm = _twin()
    monkeypatch.setattr(remote, "SHIPPED_MODULES", remote.SHIPPED_MODULES - {"interp.lens"})
    logit_lens(m, PROMPT)
    with pytest.raises(ModuleNotFoundError, match="No module named 'interp'"):
        logit_lens(rm, PROMPT)


def test_transient_failures_are_retried_with_backoff(monkeypatch):
    from interp.remote import _local_backend_class

    m, rm = _twin()
    session = rm.engine.session
    sleeps = []
    session.sleep = sleeps.append
    real = _local_backend_class().__call__
    failures = {"n": 2, "exc": ConnectionError("connection reset by peer")}

    def flaky(self, tracer):
        if failures["n"]:
            failures["n"] -= 1
            raise failures["exc"]
        return real(self, tracer)
    monkeypatch.setattr(_local_backend_class(), "__call__", flaky)
    fn = lambda lg: lg.argmax(-1)  # noqa: E731
    assert torch.equal(rm.run(PROMPT, logits=fn).logits, m.run(PROMPT, logits=fn).logits)
    assert session.stats.retries == 2 and sleeps == [1.0, 2.0]
    failures.update(n=10)
    with pytest.raises(RemoteRequestError, match="failed 4 times"):
        rm.run(PROMPT, logits=fn)
    failures.update(n=1, exc=ValueError("a bug, not the network"))
    with pytest.raises(ValueError, match="a bug"):  # not retried
        rm.run(PROMPT, logits=fn)
    assert failures["n"] == 0


def test_a_killed_sweep_resumes_from_its_last_finished_request(tmp_path, monkeypatch):
    from interp.remote import _local_backend_class

    m, rm = _twin()
    plan = _plan(m)
    fn = lambda lg: lg.float().softmax(-1)[:, 100]  # noqa: E731
    want = m.run(plan=plan, logits=fn, skip=False).logits
    real = _local_backend_class().__call__
    sent = {"n": 0}

    def dies_at_the_third(self, tracer):
        sent["n"] += 1
        if sent["n"] == 3:
            raise KeyboardInterrupt  # the client is killed while its third request runs
        return real(self, tracer)
    monkeypatch.setattr(_local_backend_class(), "__call__", dies_at_the_third)
    session = rm.engine.session
    session.request_rows = 3
    session.log_to(tmp_path / "log")
    with pytest.raises(KeyboardInterrupt):
        rm.run(plan=plan, logits=fn, max_rows=2)
    monkeypatch.setattr(_local_backend_class(), "__call__", real)
    fresh = simulate_remote(m.hf, m.tokenizer, m.name)  # a new client on the same log
    fresh.engine.session.request_rows = 3
    fresh.engine.session.log_to(tmp_path / "log")
    out = fresh.run(plan=plan, logits=fn, max_rows=2)
    st = stats(fresh)
    assert st.resumed == 2 and st.requests == 1
    _close(out.logits, want, 1e-5)


def test_remote_settings_are_checked_before_anything_loads(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(RemoteConfigError, match="NDIF_API_KEY"):
        interp.load("meta-llama/Llama-3.1-8B", remote=True)
    with pytest.raises(RemoteConfigError, match="hosted by NDIF"):
        interp.load(remote=True)  # the embedded model is not on NDIF
    monkeypatch.setattr(CONFIG.API, "APIKEY", "a-key")
    monkeypatch.setattr(CONFIG.API, "HOST", "http://127.0.0.1:9")
    with pytest.raises(RemoteUnavailableError, match="127.0.0.1:9 cannot be reached"):
        interp.load("meta-llama/Llama-3.1-8B", remote="ndif")
    with pytest.raises(EngineError, match="runs through nnsight"):
        interp.load(engine="hf", remote="local")
    with pytest.raises(SettingError, match="remote must be"):
        interp.load(remote="cloud")


def test_remote_errors_on_the_cli_are_one_line(monkeypatch, capsys):
    from nnsight import CONFIG

    from interp.cli import main
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    assert main(["lens", "--prompt", PROMPT, "--remote", "ndif", "--model", "meta-llama/Llama-3.1-8B"]) == 2
    err = capsys.readouterr().err
    assert "NDIF_API_KEY" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------- every method family, default model
@pytest.fixture(scope="module")
def remote_default():
    return interp.load(remote="local")


def test_lens(default_model, remote_default):
    from interp.lens import logit_lens
    a, b = (logit_lens(m, PROMPT, target=" Paris") for m in (default_model, remote_default))
    assert torch.equal(a.top_ids, b.top_ids)
    _close(a.top_probs, b.top_probs)
    _close(a.target_probs, b.target_probs)


def test_causal_trace(default_model, remote_default):
    from interp.mediation.causal_trace import causal_trace
    # every layer at an inner subject token, the last subject token and the last token (363 rows, not 1203:
    # the remote path runs the plan without work skipping)
    a, b = (causal_trace(m, PROMPT, SUBJECT, kinds=("resid", "mlp"), samples=2, positions=[2, 3, 9])
            for m in (default_model, remote_default))
    assert a.grid("resid").isfinite().any()
    for k in a.kinds:
        _close(a.grid(k), b.grid(k))
    _close([a.p_clean, a.p_corrupt], [b.p_clean, b.p_corrupt])


def test_activation_and_attribution_patching(default_model, remote_default):
    from interp.mediation.attribution import attribution_patching
    from interp.mediation.patching import activation_patching
    kw = dict(sites=["resid_pre", "attn_out", "head"], layers=[0, 10, 20], heads=[0, 4])
    a, b = (activation_patching(m, PROMPT, CORRUPT, **kw) for m in (default_model, remote_default))
    for s in a.sites:
        _close(a.grid(s), b.grid(s))
    # AtP and AtP* (Kramár et al. 2024): backward passes, GradDrop and the QK fix's patterns on the server
    for method in ("atp", "atp*"):
        st = stats(remote_default)
        st.reset()
        a, b = (attribution_patching(m, PROMPT, CORRUPT, method=method, **kw) for m in (default_model, remote_default))
        for s in a.sites:
            assert a.grid(s).abs().max() > 0
            _close(a.grid(s), b.grid(s))
        _close([a.clean_metric, a.corrupt_metric], [b.clean_metric, b.corrupt_metric])
        assert st.requests == 2  # the answer tokens; the source and base runs with every estimate


def test_knockout_and_contributions(default_model, remote_default):
    from interp.attention.contributions import attention_contributions
    from interp.attention.knockout import attention_knockout
    a, b = (attention_knockout(m, PROMPT, subject=SUBJECT, layers=[5, 15, 25]) for m in (default_model, remote_default))
    assert a.answer_id == b.answer_id
    for s in a.sources:
        _close(a.p_knockout[s], b.p_knockout[s])
    a, b = (attention_contributions(m, PROMPT, subject=SUBJECT) for m in (default_model, remote_default))
    assert a.answer_id == b.answer_id
    for f in ("head_src", "layer_src", "group_norm", "head_group", "dla", "pattern"):
        _close(getattr(a, f), getattr(b, f))


def test_neuron_decoding_and_clamping(default_model, remote_default):
    from interp.neurons.clamp import clamp_effect, clamp_generate
    from interp.neurons.decode import decode_neurons
    a, b = (decode_neurons(m, layers=[0, 29], k=5, final_norm="gain") for m in (default_model, remote_default))
    assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.bottom_ids, b.bottom_ids)
    _close(a.top_scores, b.top_scores)
    a, b = (clamp_effect(m, PROMPT, [(20, 1090), (15, 7)], [0.0, 10.0], " Paris") for m in (default_model, remote_default))
    _close(a.p_clamped, b.p_clamped)
    _close(a.clean_activation, b.clean_activation)
    a, b = (clamp_generate(m, PROMPT, [(20, 1090)], 10.0, max_new_tokens=3) for m in (default_model, remote_default))
    assert a["clamped_ids"] == b["clamped_ids"] and a["clean_ids"] == b["clean_ids"]


def test_concept_vectors(default_model, remote_default):
    from interp.concepts.vectors import causal_check, find_concept_vectors
    from interp.datasets import Fact
    a, b = (find_concept_vectors(m, "France", terms=["france", "french", "paris"], k=50, layers=[10, 20, 29],
                                 limit=5) for m in (default_model, remote_default))
    assert [(c["layer"], c["index"], c["top_tokens"]) for c in a.candidates] == \
           [(c["layer"], c["index"], c["top_tokens"]) for c in b.candidates]
    _close([c["score"] for c in a.candidates], [c["score"] for c in b.candidates])
    _close([c["norm"] for c in a.candidates], [c["norm"] for c in b.candidates])
    vec = [(a.candidates[0]["layer"], a.candidates[0]["index"])]
    facts = [Fact(PROMPT, SUBJECT, "Paris"), Fact("The capital of France is", "France", "Paris")]
    a, b = (causal_check(m, vec, related_facts=facts, related_questions=["What is the capital of France?"],
                         sigma=2.0, max_new_tokens=4) for m in (default_model, remote_default))
    _close([a.facts["related"]["p_before"], a.facts["related"]["p_after"]],
           [b.facts["related"]["p_before"], b.facts["related"]["p_after"]])
    assert a.examples == b.examples and a.qa == b.qa
    _close(a.vector_norms, b.vector_norms)


def test_probe_features_and_reliance_scores(default_model, remote_default, tmp_path):
    from probes.features import extract_features, greedy_from_resid
    from probes.reliance import external_context_score, parametric_knowledge_score
    prompts = [PROMPT, "Information: Rome is in Italy. The Colosseum is located in the city of"]
    fa, fb = (extract_features(m, prompts, tmp_path / n, layers=[3, 17], progress=False)
              for m, n in ((default_model, "a"), (remote_default, "b")))
    for c in ("resid", "mlp", "attn"):
        _close(fa.stack(c), fb.stack(c))
    h = fa.final_resid()
    assert torch.equal(greedy_from_resid(default_model, h, k=3), greedy_from_resid(remote_default, h, k=3))
    _close(parametric_knowledge_score(default_model, prompts, layers=[3, 17, 29]),
           parametric_knowledge_score(remote_default, prompts, layers=[3, 17, 29]))
    spans = [(0, 4), (1, 8)]
    _close(external_context_score(default_model, prompts, spans), external_context_score(remote_default, prompts, spans))


# ---------------------------------------------------------------------- the CLI, default model
CLI = {
    "lens": (["lens", "--prompt", PROMPT, "--target", " Paris"], "lens.json", ["top_probs", "target_probs"]),
    "trace": (["trace", "--prompt", PROMPT, "--subject", SUBJECT, "--kinds", "resid", "--samples", "2"],
              "trace.json", ["p_restored", "p_clean"]),
    "patch": (["patch", "--clean", PROMPT, "--corrupt", CORRUPT, "--layers", "0,15,29"],
              "patching.json", ["values"]),
    "patch-atp": (["patch", "--clean", PROMPT, "--corrupt", CORRUPT, "--layers", "0,15,29", "--atp"],
                  "attribution.json", ["estimates", "clean_metric", "corrupt_metric"]),
    "patch-atp-star": (["patch", "--clean", PROMPT, "--corrupt", CORRUPT, "--layers", "0,15,29", "--atp-star"],
                       "atp_star/attribution.json", ["estimates", "clean_metric", "corrupt_metric"]),
    "knockout": (["knockout", "--prompt", PROMPT, "--subject", SUBJECT, "--layers", "5,20"],
                 "knockout.json", ["p_knockout", "p_clean"]),
    "contributions": (["contributions", "--prompt", PROMPT, "--subject", SUBJECT], "contributions.json", ["dla"]),
    "neurons-decode": (["neurons", "decode", "--layers", "29", "--top-k", "3"], "neuron_map.json", ["k", "layers"]),
    "neurons-clamp": (["neurons", "clamp", "--prompt", PROMPT, "--neuron", "20:1090", "--value", "10",
                       "--target", " Paris"], "neuron_clamp.json", ["p_clamped"]),
    "concepts-find": (["concepts", "find", "--concept", "France", "--layers", "29", "--top-k", "20"],
                      "concept_candidates.json", ["candidates"]),
}


@pytest.fixture(scope="module")
def cli_loads():
    undo = cached_loads()
    yield
    undo()


@pytest.mark.parametrize("name", list(CLI))
def test_cli_remote_local_gives_the_hf_numbers(name, cli_loads, tmp_path, capsys):
    from interp.cli import main
    argv, stem, fields = CLI[name]
    out = {}
    for mode in ("hf", "local"):
        extra = ["--remote", "local"] if mode == "local" else []
        assert main(argv + extra + ["--out", str(tmp_path / mode), "--json"]) == 0, capsys.readouterr().err
        capsys.readouterr()
        out[mode] = json.loads((tmp_path / mode / stem).read_text())
    for f in fields:
        assert _approx(out["hf"][f], out["local"][f]), (f, out["hf"][f], out["local"][f])
    assert any((tmp_path / "local" / "remote-requests").iterdir())  # the request log of a resumable run


def _approx(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_approx(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_approx(a, b) for a, b in zip(x, y))
    if isinstance(x, float):
        return abs(x - y) <= TOL or (x != x and y != y)
    return x == y
