"""The knowledge-conflict probing pipeline as a library: dataset → prompts → activations →
labels → probes (Zhao et al. 2024, SpARE ``spare/kc_probing.py``), resumable, stable JSON.

``interp probe`` (:mod:`probes.cli`) only parses its flags and calls :func:`probe_dataset`; the
figures job (:mod:`probes.report`) calls :func:`prepare` and :func:`probe_dataset` directly.

Steps (each resumable, so a killed run restarted with the same flags continues):

1. load the dataset (``nqswap:PATH | conflictqa:PATH | facts:PATH[,PATH…]``; skipped rows
   reported); with ``known=RULE`` keep only the examples whose original answer the model gives
   closed-book (:mod:`probes.known`; resumable scan in ``CACHE/known``, counts per source in
   ``OUT/known.json``) — the conflicts that contradict its memory,
2. build few-shot prompts (:mod:`probes.prompts`): original context, substituted context,
   closed-book,
3. stream last-token activations of every layer × component to ``CACHE/ctx`` and the
   closed-book final residual to ``CACHE/closed`` (:mod:`probes.features`; ``CACHE`` defaults to
   ``OUT/acts`` — pass the same ``--cache`` to run the other task without a second extraction),
4. label the model's behaviour (:mod:`probes.labels`) → ``OUT/labels.json``,
5. fit the probes per component (one :class:`interp.sweep.Checkpoint` item per component in
   ``OUT/fits/``), → ``OUT/probe.json`` (:class:`probes.result.ProbeResult`), the figure
   ``OUT/probe_accuracy.{html,png,pdf}``, and the probe weights of every layer of the first
   split in ``OUT/weights/<component>.safetensors`` (+ the best layer's probe as a
   :class:`~probes.linear.LinearProbe` in ``OUT/weights/best.*``).

Tasks: ``conflict`` — original (0) vs substituted (1) context prompts, every example twice;
``source`` — substituted-context prompts the model answered from the context (1) vs from memory
(0), ``neither``/``ambiguous`` kept apart (their counts are in ``class_counts``).
"""

from __future__ import annotations

import json
from pathlib import Path

from interp.datasets import dataset_label
from interp.errors import DatasetError
from interp.sweep import write_atomic

TASKS = ("conflict", "source")


def spec_label(spec: str) -> str:
    """``FORMAT:PATH[,PATH…]`` as results record it: paths relative to the data directory (no machine path)."""
    fmt, sep, path = str(spec).partition(":")
    if not (sep and path):
        return str(spec)
    return f"{fmt}:" + ",".join(dataset_label(p.strip()) for p in path.split(",") if p.strip())


#: bump when the labelling rule changes, so saved labels.json files are recomputed
LABELS_VERSION = 2


def prepare(model, dataset: str, out_dir: str | Path, *, limit: int | None = None, n_demos: int = 4,
            max_chars: int = 160, demo_chars: int = 80, components=("resid", "mlp", "attn"),
            layers=None, cache_dir: str | Path | None = None, batch_size: int = 16, progress: bool = True,
            known: str | None = None, known_min_p: float | None = None, per_relation: int | None = None):
    """Steps 1–4: dataset → prompts → activations → labels.  Returns ``(prompts, features, labels, cs)``.

    ``known``: a known-fact rule (``"first_token"``, see :mod:`probes.known`) — keep only the
    examples the model answers closed-book (``per_relation``: at most that many per source and
    relation); the demonstrations' groups are set aside first, so they are neither scanned nor probed.
    """
    from .data import load_conflicts
    from .features import extract_features, greedy_from_resid, greedy_keys
    from .labels import Labels, source_labels
    from .prompts import build_prompts, choose_demos

    if known:
        from .known import check_rule
        check_rule(known, known_min_p, per_relation)
    elif per_relation is not None or known_min_p is not None:
        from interp.errors import SettingError
        raise SettingError("per_relation / known_min_p (--per-relation / --known-min-p) only apply with a known "
                           "rule: add known='first_token' (--known first_token)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out / "acts"
    cs = load_conflicts(dataset, limit=limit)
    demos = choose_demos(cs.examples, n_demos)
    examples = cs.examples
    if known:
        examples = known_examples(model, cs, demos, out, cache, rule=known, min_p=known_min_p,
                                  per_relation=per_relation, batch_size=batch_size, progress=progress)
    ps = build_prompts(examples, n_demos=n_demos, max_chars=max_chars, demo_chars=demo_chars, demos=demos)
    if not ps.examples:
        raise DatasetError(f"{dataset}: no examples left after taking {n_demos} demonstrations; raise --limit")
    L = model.n_layers
    closed = extract_features(model, ps.closed, cache / "closed", components=["resid"], layers=[L - 1],
                              batch_size=batch_size, progress=progress)
    feats = extract_features(model, ps.org + ps.sub, cache / "ctx", components=components, layers=layers,
                             batch_size=batch_size, progress=progress)
    lpath = out / "labels.json"
    n = len(ps.examples)
    try:
        old = json.loads(lpath.read_text()) if lpath.exists() else {}
    except json.JSONDecodeError:  # damaged by hand or by an older, non-atomic writer: recompute
        old = {}
    label = spec_label(dataset)
    if (old.get("n") == n and old.get("dataset") == label and old.get("ids") == [e.id for e in ps.examples]
            and old.get("version") == LABELS_VERSION):
        labels = Labels.from_dict(old["labels"])
    else:
        pred_ctx = greedy_from_resid(model, feats.final_resid())[:, 0].tolist()
        pred_closed = greedy_from_resid(model, closed.final_resid())[:, 0].tolist()
        keys_ctx = greedy_keys(model, ps.org + ps.sub, pred_ctx, batch_size=batch_size)
        keys_closed = greedy_keys(model, ps.closed, pred_closed, batch_size=batch_size)
        labels = source_labels(model, ps.examples, keys_ctx[n:], keys_ctx[:n], keys_closed)
        write_atomic(lpath, json.dumps({"version": LABELS_VERSION, "n": n, "dataset": label,
                                        "labels": labels.to_dict(), "skipped_rows": cs.report.skipped,
                                        "ids": [e.id for e in ps.examples]}, indent=0))
    return ps, feats, labels, cs


def known_examples(model, cs, demos, out: Path, cache: Path, *, rule: str, min_p: float | None = None,
                   per_relation: int | None = None, batch_size: int = 16, progress: bool = True) -> list:
    """The examples of ``cs`` outside the demonstrations' groups that the model answers closed-book.

    Fact sets are checked on their cloze prompt, QA sets on the few-shot closed-book prompt; the
    counts per source go to ``out/known.json`` (:meth:`probes.known.KnownScan.to_dict`).
    """
    from interp.sweep import write_atomic

    from .known import known_conflicts
    from .prompts import closed_book_prompt

    groups = {d.group for d in demos}
    todo = [e for e in cs.examples if e.group not in groups]
    prompts = None if all(e.source == "facts" for e in todo) else [closed_book_prompt(demos, e) for e in todo]
    scan = known_conflicts(model, todo, rule=rule, min_p=min_p, prompts=prompts, out_dir=cache / "known",
                           per_relation=per_relation, batch_size=max(batch_size, 32), progress=progress)
    write_atomic(out / "known.json", json.dumps(scan.to_dict(), indent=0))
    if not scan.examples:
        raise DatasetError(f"the model answers none of the {len(todo)} examples closed-book under the "
                           f"{rule!r} rule ({scan.totals()}): raise --limit, add facts, or drop --known")
    return scan.examples


def task_rows(task: str, ps, labels) -> tuple[list[int], list[int], list[str]]:
    """Feature rows (into org + sub), labels and groups of a task."""
    n = len(ps.examples)
    groups = [e.group for e in ps.examples]
    if task == "conflict":
        return list(range(2 * n)), [0] * n + [1] * n, groups + groups
    if task == "source":
        keep = [i for i, s in enumerate(labels.source) if s in ("context", "memory")]
        return [n + i for i in keep], [int(labels.source[i] == "context") for i in keep], [groups[i] for i in keep]
    raise DatasetError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def probe_dataset(model, dataset: str, out_dir: str | Path, *, task: str = "conflict", limit: int | None = None,
                  components=("resid", "mlp", "attn"), layers=None, n_seeds: int = 5, n_demos: int = 4,
                  max_chars: int = 160, demo_chars: int = 80, cache_dir=None, batch_size: int = 16,
                  iters: int = 200, progress: bool = True, known: str | None = None,
                  known_min_p: float | None = None, per_relation: int | None = None):
    """Knowledge-conflict probes (Zhao et al. 2024), the full pipeline for one task; returns the
    :class:`~probes.result.ProbeResult` (also saved).

    ``known`` / ``known_min_p`` / ``per_relation``: probe only the conflicts with the model's memory
    (see :func:`prepare`); the result's ``class_counts["known_scan"]`` has the counts per source.
    """
    import torch

    from interp.sweep import Checkpoint

    from interp.arch import check_components

    from .linear import LinearProbe, check_labels, probe_layers, summarise

    if task not in TASKS:
        raise DatasetError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    comps = check_components(components)
    out = Path(out_dir)
    ps, feats, labels, cs = prepare(model, dataset, out, limit=limit, n_demos=n_demos, max_chars=max_chars,
                                    demo_chars=demo_chars, components=comps, layers=layers,
                                    cache_dir=cache_dir, batch_size=batch_size, progress=progress, known=known,
                                    known_min_p=known_min_p, per_relation=per_relation)
    rows, y, groups = task_rows(task, ps, labels)
    check_labels(y, f"{task} task ({len(y)} rows; label counts {labels.counts})")
    label = spec_label(dataset)
    settings = {"task": task, "dataset": label, "limit": limit, "n_demos": n_demos, "max_chars": max_chars,
                "demo_chars": demo_chars, "layers": feats.layers, "n_seeds": n_seeds, "iters": iters,
                "n_examples": len(ps.examples), "model": model.name}
    if known:  # only then, so fits made before this option resume unchanged
        settings.update(known=known, known_min_p=known_min_p, per_relation=per_relation)
    ck = Checkpoint(out / "fits" / task, settings)
    idx = torch.tensor(rows)
    per = {}
    wdir = out / "weights" / task
    for comp in comps:
        if comp not in ck:
            X = feats.stack(comp)[:, idx]
            r = probe_layers(X, y, groups, n_seeds=n_seeds, iters=iters)
            from safetensors.torch import save_file
            wdir.mkdir(parents=True, exist_ok=True)
            save_file({"weight": r["weight"].contiguous(), "bias": r["bias"].contiguous()},
                      str(wdir / f"{comp}.safetensors"))
            ck.add(comp, {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()
                          if k not in ("weight", "bias")})
        per[comp] = ck.done[comp]
    n_pos = sum(y)
    counts = {"n_rows": len(y), "class_1": n_pos, "class_0": len(y) - n_pos,
              "class_1_is": "substituted context (conflict)" if task == "conflict" else "context answer",
              "n_examples": len(ps.examples), "behaviour": labels.counts,
              "skipped_dataset_rows": len(cs.report.skipped)}
    origins = sorted({e.origin for e in ps.examples})
    if len(origins) > 1:
        counts["examples_per_source"] = {o: sum(e.origin == o for e in ps.examples) for o in origins}
    if known:
        scan = json.loads((out / "known.json").read_text())
        counts["known_scan"] = {k: scan[k] for k in ("rule", "per_relation", "totals", "counts")}
    res = summarise(per, feats.layers, task=task, class_counts=counts, dataset=label, model=model.name,
                    settings=settings, groups=groups)
    res.save(out)
    b = res.best
    if b:
        from safetensors.torch import load_file
        t = load_file(str(wdir / f"{b['component']}.safetensors"))
        k = feats.layers.index(b["layer"])
        cfg = per[b["component"]]["configs"][0][k]
        LinearProbe(t["weight"][k], float(t["bias"][k]), b["component"], b["layer"], cfg[0], float(cfg[1])
                    ).save(wdir, "best")
    return res
