"""Name movers on the default model: path patching from every head and MLP to the logits (IOI).

Wang et al. 2022's name-mover experiment on SmolLM2-135M: indirect-object prompts ("When Mary and
John went to the store, John gave a drink to" → " Mary"), each paired with an ABC corruption
(three other names, same token count).  For every head and MLP, path patching to the logits
(noising: the clean run with the sender from the ABC run, later heads frozen, MLPs recomputed;
:func:`interp.mediation.path_patching.path_patching`); the normalised effect (fraction of the
clean → corrupt logit-difference change carried by the direct path) is averaged over prompts
with per-cell statistics (:func:`interp.stats.cell_stats`: bootstrap CI over prompts, sign-flip
p-values, maxT over all senders).  Resumable: one ``items.jsonl`` line per prompt.

``--receiver q:23:3`` instead ends the paths at the queries of head 23.3 (at the last position;
``k:…`` / ``v:…`` at a KV head's keys / values, every position): Wang et al.'s next step, which
finds the heads (S-inhibition) that tell a name mover where to look.

Run: ``.venv/bin/python benchmarks/path_patching_ioi.py --out figures/results/path_patching_ioi``
and ``… --receiver q:23:3 --out figures/results/path_patching_ioi_q``
"""

from __future__ import annotations

import argparse
import json

#: (template, IO, S, ABC names): ``{A}`` is the indirect object, ``{B}`` the subject (repeated)
PROMPTS = [
    ("When {A} and {B} went to the store, {B} gave a drink to", "Mary", "John", ("Alice", "Bob", "Carl")),
    ("When {A} and {B} went to the park, {B} gave a ball to", "Tom", "James", ("Mark", "Peter", "Steve")),
    ("After {A} and {B} had lunch, {B} passed the salt to", "Sarah", "Emma", ("Laura", "Kate", "Rachel")),
    ("When {A} and {B} went to the bar, {B} handed a beer to", "David", "Paul", ("George", "Frank", "Henry")),
    ("After {A} and {B} arrived at the party, {B} gave a gift to", "Anna", "Lisa", ("Julia", "Susan", "Nancy")),
    ("When {A} and {B} went to school, {B} gave a book to", "Mike", "Kevin", ("Chris", "Brian", "Jason")),
    ("Then {A} and {B} had a long argument, and afterwards {B} said to", "Daniel", "Robert",
     ("Thomas", "Richard", "Joseph")),
    ("While {A} and {B} were working at the office, {B} sent an email to", "Jessica", "Sophie",
     ("Olivia", "Grace", "Emily")),
]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="figures/results/path_patching_ioi")
    ap.add_argument("--fig", default="figures")
    ap.add_argument("--max-rows", type=int, default=None)
    ap.add_argument("--receiver", default="logits",
                    help="'logits' or KIND:LAYER:HEAD with KIND q, k or v (a head's queries / keys / values)")
    args = ap.parse_args(argv)
    receiver = parse_receiver(args.receiver)

    import torch

    import interp
    from interp.figures import save_figure
    from interp.mediation.path_patching import path_patching, path_patching_figure
    from interp.stats import cell_stats
    from interp.sweep import Checkpoint

    model = interp.load()
    config = {"method": "path patching to logits, IOI vs ABC", "model": model.name,
              "direction": "noise", "freeze_mlps": False, "prompts": PROMPTS}
    if receiver != "logits":
        config.update(method="path patching IOI vs ABC", receiver=list(receiver))
    ck = Checkpoint(args.out, config)
    last = None
    for i, (tpl, io, s, (c, d, e)) in enumerate(PROMPTS):
        clean = tpl.format(A=io, B=s)
        corrupt = tpl.replace("{B} gave", "{E} gave").replace("{B} passed", "{E} passed").replace(
            "{B} handed", "{E} handed").replace("{B} said", "{E} said").replace("{B} sent", "{E} sent").format(
            A=c, B=d, E=e)
        if str(i) not in ck:
            res = path_patching(model, clean, corrupt, answer=" " + io, wrong=" " + s, max_rows=args.max_rows,
                                receiver=receiver)
            ck.add(i, {"clean": clean, "corrupt": corrupt, "clean_metric": res.clean_metric,
                       "corrupt_metric": res.corrupt_metric, "senders": res.senders, "values": res.values,
                       "normalized": res.normalized().tolist(), "base_metric": res.base_metric,
                       "receiver": res.receiver})
            last = res
    recs = [ck.done[str(i)] for i in range(len(PROMPTS))]
    if last is None:
        from interp.mediation.path_patching import PathPatchingResult
        last = PathPatchingResult(recs[0]["clean"], recs[0]["corrupt"], [], "noise", "logit_diff", "", "",
                                  recs[0]["clean_metric"], recs[0]["corrupt_metric"], recs[0].get("receiver", "logits"),
                                  recs[0]["senders"],
                                  recs[0]["values"], model.n_layers, model.adapter.n_heads, model=model.name)
    x = torch.tensor([r["normalized"] for r in recs], dtype=torch.float64)  # prompt sender
    st = cell_stats(x)
    # the mean normalised effect over prompts, the senders significant after maxT marked
    to = "the logits" if receiver == "logits" else last.receiver
    short, _, where = to.partition(" (")
    fig = path_patching_figure(last, values=st.mean, marks=st.significant(),
                               title=(f"Path patching to {short}, {len(recs)} IOI prompts vs ABC (noising)<br>"
                                      f"<sup>mean normalised effect, * = p_adj < 0.05 (maxT)"
                                      f"{'; receiver at ' + where.rstrip(')') if where else ''} — {model.name}</sup>"))
    files = save_figure(fig, args.fig, figure_stem(receiver))
    order = st.mean.argsort()
    def entry(k):
        return {"sender": recs[0]["senders"][int(k)], "mean": float(st.mean[k]),
                "ci": [float(st.ci_low[k]), float(st.ci_high[k])], "p_adj": float(st.p_adj[k])}
    top = [entry(k) for k in order[:8]]
    top_positive = [entry(k) for k in order.flip(0)[:8]]
    sig = [int(k) for k in st.significant().nonzero().flatten()]
    sig.sort(key=lambda k: -abs(float(st.mean[k])))
    significant = [entry(k) for k in sig]
    command = ".venv/bin/python benchmarks/path_patching_ioi.py" + (
        "" if receiver == "logits" else f" --receiver {args.receiver}") + f" --out {args.out}"
    summary = {"prompts": len(recs), "receiver": to, "stem": figure_stem(receiver), "command": command,
               "significant": significant, "mean_clean_logit_diff": sum(r["clean_metric"] for r in recs) / len(recs),
               "mean_corrupt_logit_diff": sum(r["corrupt_metric"] for r in recs) / len(recs),
               "n_significant": int(st.significant().sum()), "strongest_negative": top, "strongest_positive": top_positive,
               "files": files,
               "stats": st.settings}
    (ck.dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


def parse_receiver(text: str):
    """``"logits"`` or ``"q:23:3"`` → ``("q", 23, 3)`` (the receiver argument of path_patching)."""
    if text == "logits":
        return text
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("q", "k", "v") or not all(p.lstrip("-").isdigit() for p in parts[1:]):
        raise SystemExit(f"--receiver {text!r}: give 'logits' or KIND:LAYER:HEAD with KIND q, k or v (e.g. q:23:3)")
    return (parts[0], int(parts[1]), int(parts[2]))


def figure_stem(receiver) -> str:
    """``path_patching_ioi`` (to the logits) or e.g. ``path_patching_ioi_q_L23H3`` /
    ``path_patching_ioi_v_L23KV1`` (keys and values belong to KV heads)."""
    if receiver == "logits":
        return "path_patching_ioi"
    kind, layer, head = receiver
    return f"path_patching_ioi_{kind}_L{layer}{'H' if kind == 'q' else 'KV'}{head}"


if __name__ == "__main__":
    main()
