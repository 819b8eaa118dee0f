"""AtP vs AtP* vs real activation patching on the default model over known_1000 subject swaps.

Kramár et al. 2024's evaluation on our default model: for ``--pairs`` subject-swap pairs of equal
token length (:func:`interp.mediation.pairs.subject_swap_pairs`), real patching of every cell of
``--sites`` and the four attribution methods (AtP, AtP + QK fix, AtP + GradDrop, AtP*), then the
Spearman correlation per site, the cost-to-recall curves and the cells the QK fix corrects
(:mod:`interp.mediation.atp_validation`).  Resumable: per-pair records go to ``OUT/items.jsonl``;
a rerun with the same flags continues.  Writes ``OUT/atp_validation.json`` and the figure
``FIG/atp_star_validation.{html,png,pdf}``; prints the summary (per-method seconds are measured in
this one run, so their ratios are meaningful; absolute times depend on the machine's load).

Run: ``.venv/bin/python benchmarks/atp_star_validation.py --pairs 20 --out figures/results/atp_star_validation``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--sites", default="resid_pre,attn_out,mlp_out,head")
    ap.add_argument("--dataset", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "known_1000"
                                             / "known_1000.json"))
    ap.add_argument("--out", default="figures/results/atp_star_validation")
    ap.add_argument("--fig", default="figures")
    ap.add_argument("--max-rows", type=int, default=None)
    args = ap.parse_args(argv)

    import interp
    from interp.figures import save_figure
    from interp.mediation.atp_validation import validate_attribution
    from interp.mediation.pairs import subject_swap_pairs

    model = interp.load()
    pairs = subject_swap_pairs(model, args.dataset, args.pairs)
    res = validate_attribution(model, pairs, args.out, sites=args.sites.split(","), max_rows=args.max_rows)
    res.save(args.out)
    fig = save_figure(res.figure(), args.fig, "atp_star_validation")
    summary = {"pairs": res.n_pairs, "files": fig,
               "spearman_magnitude": {m: {s: round(d["mean"], 3) for s, d in v["per_site"].items()}
                                      for m, v in res.spearman["magnitude"].items()},
               "spearman_signed": {m: {s: round(d["mean"], 3) for s, d in v["per_site"].items()}
                                   for m, v in res.spearman["signed"].items()},
               "cost_to_recall_top10": {m: round(c["mean"][9], 1) for m, c in res.cost.items()},
               "cost_to_recall_top50": {m: round(c["mean"][-1], 1) for m, c in res.cost.items()},
               "seconds_ratio_to_patching": {k: round(v / res.seconds["patching"], 3) for k, v in res.seconds.items()},
               "qk_cells": res.qk_cells[:3]}
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
