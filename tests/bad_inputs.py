"""The bad-input table: invalid ``interp`` invocations, each must exit 2 with one line naming the fix.

Used by ``tests/test_cli_bad_input.py`` (one parametrised test per row) and by
``tests/scripts/bad_input_table.py`` (prints the table as markdown for the issue's note).
Arguments may hold ``{name}`` placeholders filled from :func:`build_inputs`: tiny random models
saved to disk (``tiny``, a second one ``other``), data files, and result directories already
made by another model.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

from conftest import cached_loads  # noqa: F401 — re-exported for the test and the table script

PROMPT = "The Eiffel Tower is in the city of"
FACTS = [{"prompt": PROMPT, "subject": "Eiffel Tower", "attribute": "Paris"},
         {"prompt": "The Louvre is a museum in", "subject": "Louvre", "attribute": "Paris"},
         {"prompt": "Mount Fuji is in the country of", "subject": "Mount Fuji", "attribute": "Japan"}]
NQ = [{"question": f"who wrote book {i}?", "org_context": f"Book {i} was written by Ann {i}.",
       "org_answer": [f"Ann {i}"], "sub_context": f"Book {i} was written by Bob {i}.", "sub_answer": [f"Bob {i}"]}
      for i in range(8)]

#: (id, argv, expected piece of the one-line message).  "{x}" is filled from build_inputs().
CASES: list[tuple[str, list[str], str]] = [
    # --- model, engine, dtype, flags (common to every subcommand)
    ("unknown model", ["info", "--model", "no-such-model"], "neither a local directory nor a Hugging Face id"),
    ("model dir without a model", ["info", "--model", "{empty_dir}"], "could not load model"),
    ("unknown engine", ["info", "--engine", "tl"], "argument --engine: invalid choice: 'tl'"),
    ("unknown dtype", ["lens", "--prompt", "x", "--dtype", "float8"], "argument --dtype: invalid choice"),
    ("unknown subcommand", ["tracee"], "argument command: invalid choice: 'tracee'"),
    ("unknown flag", ["lens", "--prompt", "x", "--layer", "3"], "unrecognized arguments: --layer 3"),
    ("missing required flag", ["lens"], "the following arguments are required: --prompt"),
    # --- lens
    ("empty prompt (lens)", ["lens", "--model", "{tiny}", "--prompt", "   "], "prompt 0 is empty"),
    ("empty target (lens)", ["lens", "--model", "{tiny}", "--prompt", PROMPT, "--target", ""],
     "tokenises to nothing"),
    ("prompt longer than the context", ["lens", "--model", "{tiny}", "--prompt", "Paris " * 300],
     "model's context is 128: shorten it"),
    # --- figures
    ("unknown figures section", ["figures", "--redraw", "--only", "lens,nope", "--out", "{empty_dir}"],
     "unknown section(s) ['nope']"),
    ("figures redraw without results", ["figures", "--redraw", "--only", "lens", "--out", "{empty_dir}"],
     "no LensResult for these settings"),
    ("quick figures over a full run's", ["figures", "--quick", "--redraw", "--only", "lens", "--out",
                                         "{full_figures}"], "holds the figures of a full run"),
    # --- trace
    ("subject not in the prompt (trace)", ["trace", "--model", "{tiny}", "--prompt", PROMPT, "--subject", "Louvre"],
     "'Louvre' does not occur in the prompt"),
    ("trace without subject", ["trace", "--model", "{tiny}", "--prompt", PROMPT], "needs --prompt and --subject"),
    ("shard not K/N", ["trace", "--model", "{tiny}", "--dataset", "{facts}", "--shard", "3/2"],
     "shard '3/2' is not K/N with 1 ≤ K ≤ N"),
    ("shard without a dataset", ["trace", "--model", "{tiny}", "--prompt", PROMPT, "--subject", "Eiffel Tower",
                                 "--shard", "1/2"], "--shard splits a dataset sweep: give it with --dataset"),
    ("unknown trace kind", ["trace", "--model", "{tiny}", "--prompt", PROMPT, "--subject", "Eiffel Tower",
                            "--kinds", "resid,hidden"], "unknown trace kind(s) ['hidden']"),
    ("trace window 0", ["trace", "--model", "{tiny}", "--prompt", PROMPT, "--subject", "Eiffel Tower",
                        "--window", "0"], "window"),
    ("non-numeric samples", ["trace", "--prompt", PROMPT, "--subject", "Eiffel Tower", "--samples", "ten"],
     "argument --samples: invalid int value: 'ten'"),
    ("bad noise", ["trace", "--model", "{tiny}", "--prompt", PROMPT, "--subject", "Eiffel Tower", "--noise", "loud"],
     "noise"),
    ("subject occurrence out of range", ["trace", "--model", "{tiny}", "--prompt", PROMPT, "--subject",
                                         "Eiffel Tower", "--occurrence", "2"], "occurrence"),
    ("missing dataset file (trace)", ["trace", "--model", "{tiny}", "--dataset", "{missing}"], "does not exist"),
    ("malformed dataset file (trace)", ["trace", "--model", "{tiny}", "--dataset", "{malformed}"],
     "is not valid JSON"),
    ("dataset row missing a field (trace)", ["trace", "--model", "{tiny}", "--dataset", "{no_subject}"],
     "missing field(s): subject"),
    ("min-p out of range", ["trace", "--model", "{tiny}", "--dataset", "{facts}", "--min-p", "1.5"], "--min-p"),
    ("trace result dir of another model", ["trace", "--model", "{tiny}", "--dataset", "{facts}", "--min-p", "0",
                                           "--kinds", "resid", "--samples", "1", "--out", "{trace_other}"],
     "holds a sweep of model"),
    # --- rag
    ("missing dataset file (rag)", ["rag", "--model", "{tiny}", "--dataset", "{missing}"], "does not exist"),
    ("unknown rag trace kind", ["rag", "--model", "{tiny}", "--dataset", "{facts}", "--kinds", "resid,hidden"],
     "unknown trace kind(s) ['hidden']"),
    ("non-numeric n-facts (rag)", ["rag", "--n-facts", "all"], "argument --n-facts: invalid int value"),
    # --- patch
    ("mismatched clean/corrupt lengths", ["patch", "--model", "{tiny}", "--clean", PROMPT, "--corrupt", "Hi"],
     "same number of tokens"),
    ("unknown patch site", ["patch", "--model", "{tiny}", "--clean", PROMPT, "--corrupt", PROMPT,
                            "--sites", "resid_foo"], "unknown patching site(s) ['resid_foo']"),
    ("layer out of range (patch)", ["patch", "--model", "{tiny}", "--clean", PROMPT, "--corrupt", PROMPT,
                                    "--layers", "0-7"], "layer 2 out of range"),
    ("position out of range (patch)", ["patch", "--model", "{tiny}", "--clean", PROMPT, "--corrupt", PROMPT,
                                       "--positions", "40"], "position 40 out of range"),
    ("malformed layers", ["patch", "--clean", PROMPT, "--corrupt", PROMPT, "--layers", "3:5"],
     "'3:5' is not an index"),
    ("unknown metric", ["patch", "--clean", PROMPT, "--corrupt", PROMPT, "--metric", "kl"],
     "argument --metric: invalid choice"),
    ("empty clean prompt", ["patch", "--model", "{tiny}", "--clean", "", "--corrupt", PROMPT], "is empty"),
    # --- knockout
    ("subject not in the prompt (knockout)", ["knockout", "--model", "{tiny}", "--prompt", PROMPT,
                                              "--subject", "Louvre"], "'Louvre' does not occur"),
    ("unknown source set", ["knockout", "--model", "{tiny}", "--prompt", PROMPT, "--subject", "Eiffel Tower",
                            "--sources", "subject,objects"], "unknown source set"),
    ("knockout window too large", ["knockout", "--model", "{tiny}", "--prompt", PROMPT, "--subject",
                                   "Eiffel Tower", "--window", "9"], "window"),
    ("knockout target position out of range", ["knockout", "--model", "{tiny}", "--prompt", PROMPT,
                                               "--subject", "Eiffel Tower", "--target", "40"], "out of range"),
    ("knockout without prompt or dataset", ["knockout", "--model", "{tiny}"], "give --prompt"),
    ("non-numeric n-facts", ["knockout", "--dataset", "{facts}", "--n-facts", "many"],
     "argument --n-facts: invalid int value"),
    ("knockout result dir of another model", ["knockout", "--model", "{tiny}", "--dataset", "{facts}",
                                              "--all-facts", "--n-facts", "1", "--out", "{knockout_other}"],
     "holds a sweep of model"),
    # --- contributions
    ("empty prompt (contributions)", ["contributions", "--model", "{tiny}", "--prompt", ""], "is empty"),
    ("unknown contribution group", ["contributions", "--model", "{tiny}", "--prompt", PROMPT, "--subject",
                                    "Eiffel Tower", "--group", "objects"], "group 'objects' is not a group"),
    # --- neurons
    ("layer out of range (neurons decode)", ["neurons", "decode", "--model", "{tiny}", "--layers", "5"],
     "layer 5 out of range"),
    ("non-positive top-k", ["neurons", "decode", "--model", "{tiny}", "--top-k", "0"], "k must be a positive integer"),
    ("neurons search without token", ["neurons", "search", "--model", "{tiny}"], "give --token"),
    ("missing neuron map", ["neurons", "search", "--model", "{tiny}", "--token", " Paris", "--map", "{missing}"],
     "no NeuronMap"),
    ("missing corpus", ["neurons", "stats", "--model", "{tiny}", "--corpus", "{missing}"], "does not exist"),
    ("malformed corpus", ["neurons", "stats", "--model", "{tiny}", "--corpus", "{malformed}"],
     "is not valid JSON"),
    ("corpus record without text", ["neurons", "stats", "--model", "{tiny}", "--corpus", "{no_subject}"],
     "no text field"),
    ("non-numeric threshold", ["neurons", "stats", "--corpus", "{facts}", "--threshold", "high"],
     "argument --threshold: invalid float value"),
    ("stats result dir of another model", ["neurons", "stats", "--model", "{tiny}", "--corpus", "{corpus}",
                                           "--max-len", "16", "--out", "{stats_other}"], "holds a sweep of model"),
    ("neuron not layer:index", ["neurons", "clamp", "--model", "{tiny}", "--prompt", PROMPT, "--neuron", "20",
                                "--target", " Paris"], "'20' is not layer:neuron"),
    ("neuron out of range", ["neurons", "clamp", "--model", "{tiny}", "--prompt", PROMPT, "--neuron", "0:999",
                             "--target", " Paris"], "neuron 999 out of range"),
    ("clamp position out of range", ["neurons", "clamp", "--model", "{tiny}", "--prompt", PROMPT, "--neuron",
                                     "0:1", "--target", " Paris", "--positions", "40"], "out of range"),
    # --- concepts
    ("concept vector layer out of range", ["concepts", "compare", "--model-a", "{tiny}", "--model-b", "{other}",
                                           "--vectors", "7:0"], "layer 7 out of range"),
    ("checkpoints of different shapes", ["concepts", "compare", "--model-a", "{tiny}", "--model-b", "{deep}"],
     "different shapes"),
    ("empty concept", ["concepts", "find", "--model", "{tiny}", "--concept", " "], "concept"),
    # --- probe
    ("unknown dataset format", ["probe", "--model", "{tiny}", "--dataset", "squad:{facts}"],
     "unknown dataset 'squad:"),
    ("missing probe dataset", ["probe", "--model", "{tiny}", "--dataset", "nqswap:{missing}"], "does not exist"),
    ("probe dataset rows missing fields", ["probe", "--model", "{tiny}", "--dataset", "nqswap:{no_subject}"],
     "no usable nqswap rows"),
    ("unknown probe component", ["probe", "--model", "{tiny}", "--dataset", "nqswap:{nq}", "--components",
                                 "resid,heads"], "unknown component(s) ['heads']"),
    ("layer out of range (probe)", ["probe", "--model", "{tiny}", "--dataset", "nqswap:{nq}", "--layers", "4"],
     "layer 4 out of range"),
    ("corrupt cache shard", ["probe", "--model", "{tiny}", "--dataset", "nqswap:{nq}", "--demos", "1",
                             "--components", "resid", "--seeds", "1", "--cache", "{corrupt_cache}",
                             "--out", "{probe_out}"], "is truncated or was replaced"),
    ("probe cache of another model", ["probe", "--model", "{tiny}", "--dataset", "nqswap:{nq}", "--demos", "1",
                                      "--components", "resid", "--seeds", "1", "--cache", "{cache_other}",
                                      "--out", "{probe_out2}"], "holds an extraction of model"),
]


def _save_tiny(path: Path, seed: int, n_layers: int = 2) -> str:
    from conftest import default_tokenizer, tiny_hf
    tiny_hf("llama", seed=seed, n_layers=n_layers).save_pretrained(path)
    default_tokenizer().save_pretrained(path)
    return str(path)


def _quiet_main(argv: list[str]) -> int:
    import contextlib
    import io

    from interp.cli import main
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def build_inputs(tmp: Path) -> dict[str, str]:
    """Files and directories the cases refer to; result dirs are made by a real run of ``other``."""
    tmp.mkdir(parents=True, exist_ok=True)
    v = {"tiny": _save_tiny(tmp / "tiny", 0), "other": _save_tiny(tmp / "other", 1),
         "deep": _save_tiny(tmp / "deep", 2, n_layers=3)}
    (tmp / "empty_dir").mkdir(exist_ok=True)
    v["empty_dir"] = str(tmp / "empty_dir")
    (tmp / "full_figures").mkdir(exist_ok=True)
    (tmp / "full_figures" / "report.json").write_text('{"mode": "full", "sections": {}}')
    v["full_figures"] = str(tmp / "full_figures")
    v["missing"] = str(tmp / "no_such_file.json")
    (tmp / "malformed.json").write_text('[{"prompt": "The Eiffel Tower is in", "subject": ')
    v["malformed"] = str(tmp / "malformed.json")
    (tmp / "no_subject.json").write_text(json.dumps([{"prompt": PROMPT, "attribute": "Paris"}]))
    v["no_subject"] = str(tmp / "no_subject.json")
    (tmp / "facts.json").write_text(json.dumps(FACTS))
    v["facts"] = str(tmp / "facts.json")
    (tmp / "corpus.json").write_text(json.dumps([f"Text number {i} is about cities and rivers." * 3
                                                 for i in range(6)]))
    v["corpus"] = str(tmp / "corpus.json")
    with gzip.open(tmp / "nq.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in NQ)
    v["nq"] = str(tmp / "nq.jsonl.gz")
    # result directories of another model
    for key, argv in {
        "trace_other": ["trace", "--dataset", v["facts"], "--min-p", "0", "--kinds", "resid", "--samples", "1"],
        "knockout_other": ["knockout", "--dataset", v["facts"], "--all-facts", "--n-facts", "1"],
        "stats_other": ["neurons", "stats", "--corpus", v["corpus"], "--max-len", "16"],
        "cache_other": ["probe", "--dataset", f"nqswap:{v['nq']}", "--demos", "1", "--components", "resid",
                        "--seeds", "1"],
    }.items():
        v[key] = str(tmp / key)
        extra = ["--cache", v[key], "--out", str(tmp / (key + "_out"))] if key == "cache_other" else ["--out", v[key]]
        rc = _quiet_main(argv + ["--model", v["other"], "--json"] + extra)
        assert rc == 0, (key, rc)
    # a cache of this model with one shard cut short
    v["probe_out"], v["probe_out2"] = str(tmp / "probe_out"), str(tmp / "probe_out2")
    v["corrupt_cache"] = str(tmp / "corrupt_cache")
    rc = _quiet_main(["probe", "--model", v["tiny"], "--dataset", f"nqswap:{v['nq']}", "--demos", "1",
                      "--components", "resid", "--seeds", "1", "--cache", v["corrupt_cache"],
                      "--out", str(tmp / "probe_ok"), "--json"])
    assert rc == 0, ("corrupt_cache", rc)
    shard = sorted((tmp / "corrupt_cache" / "ctx").glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    return v


def fill(argv: list[str], values: dict[str, str]) -> list[str]:
    return [a.format(**values) if "{" in a else a for a in argv]


def run_case(argv: list[str], values: dict[str, str]) -> tuple[int, str]:
    """Run ``interp`` in-process with ``--json`` (no progress bars); return (exit code, stderr)."""
    import contextlib
    import io
    import warnings

    from interp.cli import main
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(fill(argv, values) + ["--json"])
    return rc, err.getvalue()


def judge(rc: int, err: str, want: str) -> tuple[bool, str]:
    """(ok, the error line): exit 2, exactly one ``…: error: …`` line, last on stderr, holding ``want``.

    Lines before it can only be progress logs of the run (e.g. ``[figures] lens …``); never a traceback.
    """
    lines = [ln for ln in err.strip().splitlines() if ": error:" in ln]
    line = lines[-1] if lines else err.strip()
    ok = (rc == 2 and len(lines) == 1 and err.strip().endswith(line) and want in line
          and "Traceback" not in err and line.startswith("interp"))
    return ok, line


def shorten(text: str, values: dict[str, str]) -> str:
    """Machine paths replaced by their placeholder names (for the table in the note)."""
    for k, p in sorted(values.items(), key=lambda kv: -len(kv[1])):
        if os.sep in p:
            text = text.replace(p, "{" + k + "}")
    return text


if __name__ == "__main__":
    sys.exit("run tests/scripts/bad_input_table.py")
