"""Batched probe solver vs one scikit-learn fit per (layer, setting), same data, one run.

Claim checked: fitting every layer × regularisation setting of a component as one batched FISTA
program (probes.linear.fit_logistic) is faster than looping scikit-learn's LogisticRegression
over them, at the same optimum.  Sizes: the default model's d_model (576), 30 layers, 300
training rows, the 6 settings of probes.linear (L1 and L2 × 3 λ).  Prints seconds and the ratio.
"""

from __future__ import annotations

import time
import warnings

import torch

from probes.linear import LAMBDAS, PENALTIES, _grid, fit_logistic


def main(L: int = 30, n: int = 300, d: int = 576) -> None:
    from sklearn.linear_model import LogisticRegression
    g = torch.Generator().manual_seed(0)
    u = torch.randn(d, generator=g)
    X = torch.randn(L, n, d, generator=g)
    y = ((X[0] @ u) + 3 * torch.randn(n, generator=g) > 0).float()
    X = (X - X.mean(1, keepdim=True)) / X.std(1, keepdim=True)
    cfg, l1, l2 = _grid(LAMBDAS, PENALTIES)
    t = time.perf_counter()
    w, _ = fit_logistic(X, y, l1, l2, iters=200)  # default: one torch thread
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    fit_logistic(X, y, l1, l2, iters=200, threads=None)  # whatever torch has (2 here)
    t_batched_all = time.perf_counter() - t
    t = time.perf_counter()
    ws = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for l in range(L):
            for p, lam in cfg:
                kw = dict(C=1 / (n * lam), max_iter=1000, tol=1e-4)
                if p == "l1":
                    kw.update(l1_ratio=1.0, solver="liblinear", intercept_scaling=100)
                ws.append(LogisticRegression(**kw).fit(X[l].numpy(), y.numpy()).coef_[0])
    t_loop = time.perf_counter() - t
    ref = torch.tensor([list(v) for v in ws]).float().reshape(L, len(cfg), d)
    cos = torch.nn.functional.cosine_similarity(w, ref, dim=-1)
    print(f"{L} layers x {len(cfg)} settings, n={n}, d={d}, torch threads={torch.get_num_threads()}")
    print(f"batched FISTA (200 iters), 1 thread: {t_batched:.2f} s")
    print(f"batched FISTA (200 iters), {torch.get_num_threads()} threads: {t_batched_all:.2f} s "
          f"(ratio {t_batched_all / t_batched:.2f}x of 1 thread)")
    print(f"scikit-learn loop ({L * len(cfg)} fits): {t_loop:.2f} s")
    print(f"ratio loop / batched (1 thread): {t_loop / t_batched:.2f}x")
    nz = (w.norm(dim=-1) > 0) & (ref.norm(dim=-1) > 0)  # strong L1 zeroes some fits in both
    print(f"cosine(batched, sklearn) weights over {int(nz.sum())} non-zero fits: min {float(cos[nz].min()):.4f}, "
          f"median {float(cos[nz].median()):.4f}; all-zero in both: {int((~nz).sum())}")


if __name__ == "__main__":
    main()
