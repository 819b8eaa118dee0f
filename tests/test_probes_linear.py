"""probes.linear / features: planted-direction recovery, solver vs scikit-learn, controls, typed
errors, saved probes, steering through the intervention core, and engine parity of activations."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny
from interp.errors import DatasetError
from probes.linear import (LinearProbe, ProbeLabelError, auroc, check_labels, fit_logistic, mean_ci,
                           probe_layers, summarise)


def _planted(n=800, d=32, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    X = torch.randn(n, d, generator=g) + 2.0  # an offset: the bias must be learned
    y = ((X - 2.0) @ u + noise * torch.randn(n, generator=g) > 0).long()
    return X, y, u


def test_planted_direction_is_recovered():
    X, y, u = _planted()
    p = LinearProbe.fit(X, y, groups=[str(i // 2) for i in range(len(y))])
    assert float(p.direction @ u) > 0.97
    Xt, yt, _ = _planted(seed=0)
    assert float((p.predict(Xt) == yt).float().mean()) > 0.9


def test_solver_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    X, y, _ = _planted(n=300, d=16, noise=1.5)
    X = (X - X.mean(0)) / X.std(0)
    n, lam = len(y), 1e-2
    ref = LogisticRegression(C=1 / (n * lam), max_iter=5000, tol=1e-10).fit(X.numpy(), y.numpy())
    w, b = fit_logistic(X[None], y.float(), torch.tensor([0.0]), torch.tensor([lam]), iters=3000, tol=1e-9)
    assert torch.allclose(w[0, 0], torch.tensor(ref.coef_[0]).float(), atol=1e-3)
    assert abs(float(b[0, 0]) - float(ref.intercept_[0])) < 1e-3
    # L1: same sparsity pattern and values as liblinear with an (effectively) unpenalised bias
    ref1 = LogisticRegression(C=1 / (n * lam), l1_ratio=1.0, solver="liblinear", max_iter=5000, tol=1e-10,
                              intercept_scaling=1e3).fit(X.numpy(), y.numpy())
    w1, _ = fit_logistic(X[None], y.float(), torch.tensor([lam]), torch.tensor([0.0]), iters=5000, tol=1e-10)
    assert torch.allclose(w1[0, 0], torch.tensor(ref1.coef_[0]).float(), atol=2e-3)


def test_probe_layers_signal_noise_and_control():
    X, y, _ = _planted(n=600, d=24)
    noise = torch.randn(600, 24, generator=torch.Generator().manual_seed(5))
    groups = [str(i // 3) for i in range(600)]
    r = probe_layers(torch.stack([X, noise]), y, groups, n_seeds=3, iters=150)
    acc, ctl = r["accuracy"].mean(0), r["control_accuracy"].mean(0)
    assert acc[0] > 0.9 and abs(float(acc[1]) - 0.5) < 0.1
    assert ctl[0] < 0.65  # random per-group labels cannot be predicted on held-out groups
    res = summarise({"resid": r}, [0, 1], task="conflict", class_counts={"n_rows": 600})
    assert res.best["layer"] == 0 and res.best["accuracy_ci"][0] <= res.best["accuracy"] <= res.best["accuracy_ci"][1]
    assert len(res.components["resid"]["accuracy"]) == 2 and res.components["resid"]["selectivity"][0] > 0.25
    assert 0.35 < res.baselines["majority"] < 0.65
    # per-row outcomes: the mean over tested rows of a seed-averaged hit rate tracks the accuracy
    rc = r["row_correct"]
    assert rc.shape == (2, 600) and abs(float(rc[0].nanmean()) - float(acc[0])) < 0.05
    # statistics over the 200 question groups: the planted layer beats its control, noise does not
    res = summarise({"resid": r}, [0, 1], task="conflict", class_counts={"n_rows": 600}, groups=groups)
    st = res.stats
    assert st["settings"]["n_groups"] == 200 and st["settings"]["correction"] == "maxT"
    assert res.significant("resid") == [True, False]
    lo, hi = st["resid"]["accuracy_ci_groups"][0]
    assert lo < float(acc[0]) < hi and st["resid"]["selectivity_ci"][0][0] > 0.2
    line = next(t for t in res.figure(mask_nonsignificant=True).data if t.name == "resid")
    assert line.y[0] is not None and line.y[1] is None


def test_one_class_is_a_typed_error_not_a_solver_crash():
    X = torch.randn(1, 40, 8)
    with pytest.raises(ProbeLabelError, match="only one class"):
        probe_layers(X, [1] * 40, [str(i) for i in range(40)])
    with pytest.raises(DatasetError):  # the family a CLI catches
        check_labels([0, 0, 0])
    with pytest.raises(ProbeLabelError, match="only one class"):
        LinearProbe.fit(torch.randn(30, 4), [0] * 30)


def test_auroc_and_ci():
    s = torch.tensor([0.1, 0.4, 0.35, 0.8])
    y = torch.tensor([0, 0, 1, 1])
    from sklearn.metrics import roc_auc_score
    assert abs(float(auroc(s, y)) - roc_auc_score(y, s)) < 1e-6
    s2 = torch.tensor([0.5, 0.5, 0.5, 0.9])
    assert abs(float(auroc(s2, y)) - roc_auc_score(y, s2)) < 1e-6
    m, sd, lo, hi = mean_ci(torch.tensor([[0.8], [0.9], [0.85]]))
    assert lo < m < hi and abs(float(m) - 0.85) < 1e-6


def test_saved_probe_applies_to_new_activations_and_steers(tmp_path):
    m = tiny()
    prompts = [f"context: item {i} is red\nquestion: colour?\nanswer:" for i in range(6)]
    out = m.run(prompts, reads=[("resid_post", 1)], positions=[-1], logits="none")
    acts = out.cache["resid_post", 1][:, 0]
    X, y, _ = _planted(n=200, d=acts.shape[-1])
    p = LinearProbe.fit(X, y, layer=1)
    p.save(tmp_path, "p")
    q = LinearProbe.load(tmp_path, "p")
    assert torch.allclose(p.predict_proba(acts), q.predict_proba(acts))
    assert q.layer == 1 and q.penalty in ("l1", "l2")
    # steering: adding alpha * direction to resid_post moves the probe logit by alpha * |w|
    alpha = 3.0
    plan = q.steering_plan(m, prompts, alpha)
    steered = m.run(plan=plan, reads=[("resid_post", 1)], positions=[-1], logits="none").cache["resid_post", 1][:, 0]
    delta = q.logit(steered) - q.logit(acts)
    assert torch.allclose(delta, torch.full_like(delta, alpha * float(q.weight.norm())), atol=1e-3)


@pytest.mark.slow  # boots the TransformerLens bridge and nnsight
def test_features_same_across_engines_tiny(tmp_path):
    from probes.features import extract_features, greedy_from_resid
    prompts = ["context: Paris is in France\nquestion: where is Paris?\nanswer:", "question: who?\nanswer:",
               "context: a b c\nquestion: x\nanswer:"]
    got = {}
    for e in ("hf", "transformer_lens", "nnsight"):
        m = tiny(engine=e)
        f = extract_features(m, prompts, tmp_path / e, batch_size=2, shard_rows=2, progress=False)
        got[e] = {c: f.stack(c) for c in ("resid", "mlp", "attn")}
        got[e]["greedy"] = greedy_from_resid(m, f.final_resid())
        # rows come back in the caller's order (extraction ran them sorted by length)
        ref = m.run(prompts[1], reads=[("mlp_out", 2)], positions=[-1]).cache["mlp_out", 2][0, 0]
        assert torch.allclose(f.get("mlp", 2)[1], ref, atol=1e-5)
        assert torch.equal(got[e]["greedy"][:, 0], m.run(prompts).logits.argmax(-1))
    for e in ("transformer_lens", "nnsight"):
        for c in ("resid", "mlp", "attn"):
            assert torch.allclose(got[e][c], got["hf"][c], atol=1e-5), (e, c)


@pytest.mark.slow
def test_features_same_across_engines_real_model(default_engines, tmp_path):
    from probes.features import extract_features
    prompts = ["context: The season contained 23 episodes .\nquestion: how many episodes?\nanswer:",
               "question: who sings love will keep us alive?\nanswer:"]
    got = {}
    for e, m in default_engines.items():
        f = extract_features(m, prompts, tmp_path / e, layers=[0, 14, 29], progress=False)
        got[e] = torch.stack([f.stack(c) for c in ("resid", "mlp", "attn")])
    for e in ("transformer_lens", "nnsight"):
        assert torch.allclose(got[e], got["hf"], atol=1e-3, rtol=1e-4), e
