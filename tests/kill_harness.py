"""Kill harness: SIGKILL an ``interp`` sweep at random moments, resume it, compare with an uninterrupted run.

For each sweep — the trace sweep (``interp trace --dataset``), the knockout sweep (``interp
knockout --dataset``), neuron statistics (``interp neurons stats``) and probe feature extraction
(``interp probe``) — on a tiny random model saved to disk:

1. run the command once without interruption into ``ref/`` (timing its set-up and its work);
2. run the same command into ``run/``, SIGKILL it at a random moment, start it again with the
   same ``--out``, … ``kills`` times; then let it finish;
3. compare ``run/`` with ``ref/``: the result files (JSON equal, tensors and activation shards
   bit-identical) and every record of the sweep log (same ids, same values: nothing lost,
   nothing different).

Kill moments are drawn in units of work (log records, state snapshots, activation shards): ten
targets "this many units finished", uniform over the sweep and sorted; each run is killed a
uniform delay after reaching its target (within the next unit), or — when the target was
already passed — at a uniform moment of its set-up.
With ``tear=True`` every second kill is followed by appending a torn record (a prefix of a real
line) to the sweep log, simulating a kill in the middle of a write, which random kills rarely hit.

Runs start either as fresh ``python -m interp`` processes (``mode="exec"``: the real CLI, each
start pays the imports and the model load) or as children forked from one process that imported
interp and loaded the tiny model once (``mode="fork"``: ``interp.cli.main`` in its own process,
killed the same way, its ``interp.load`` answered from the parent's copy — what the test uses, to
spend its time on sweeps rather than on start-ups).  ``benchmarks/kill_resume.py`` is the
command line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SWEEPS = ("trace", "knockout", "stats", "probe")
#: batches between two state snapshots of ``interp neurons stats`` (its ``--save-every``: small, so that
#: the tiny sweep has enough snapshots for kills to land in its work)
SNAPSHOT_EVERY = 4


# ---------------------------------------------------------------------- inputs
def build_inputs(work: Path, *, n_facts: int = 24, n_texts: int = 60, n_nq: int = 100) -> dict[str, str]:
    """A tiny random Llama on disk plus the data files of the four sweeps."""
    import gzip

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import default_tokenizer, tiny_hf

    work.mkdir(parents=True, exist_ok=True)
    v = {"model": str(work / "tiny")}
    if not (work / "tiny" / "config.json").exists():
        tiny_hf("llama", seed=0, n_layers=2).save_pretrained(work / "tiny")
        default_tokenizer().save_pretrained(work / "tiny")
    rng = random.Random(0)
    things = ["Eiffel Tower", "Louvre", "Mount Fuji", "Golden Gate Bridge", "Colosseum", "Big Ben", "Acropolis",
              "Danube", "Sahara", "Amazon River", "Kremlin", "Alhambra"]
    facts = []
    for i in range(n_facts):
        s = f"{things[i % len(things)]} {i}"
        facts.append({"prompt": f"{s} is in the country of",
                      "subject": s, "attribute": rng.choice(["France", "Japan", "Italy", "Spain", "Egypt"])})
    facts[5] = {"prompt": facts[5]["prompt"], "attribute": "France"}  # a row missing its subject: skipped
    facts[11]["prompt"] = "Paris " * 130 + facts[11]["prompt"]  # longer than the model's context: an error
    (work / "facts.json").write_text(json.dumps(facts))
    v["facts"] = str(work / "facts.json")
    words = "river city tower bridge museum mountain country capital north south old new".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(n_texts)]
    (work / "corpus.json").write_text(json.dumps(texts))
    v["corpus"] = str(work / "corpus.json")
    with gzip.open(work / "nq.jsonl.gz", "wt") as f:
        for i in range(n_nq):
            a, b = rng.choice(words), rng.choice(words)
            f.write(json.dumps({"question": f"where is the {a} number {i}?",
                                "org_context": f"The {a} number {i} is in the {b} part of town.",
                                "org_answer": [b], "sub_context": f"The {a} number {i} is in the {a} part of town.",
                                "sub_answer": [a]}) + "\n")
    v["nq"] = str(work / "nq.jsonl.gz")
    return v


def command(sweep: str, v: dict[str, str], out: str) -> list[str]:
    """The ``interp`` arguments of one sweep, writing into ``out``."""
    common = ["--model", v["model"], "--json", "--out", out]
    if sweep == "trace":
        return ["trace", "--dataset", v["facts"], "--min-p", "0", "--kinds", "resid,mlp", "--samples", "1",
                "--window", "2", "--noise", "0.3", *common]
    if sweep == "knockout":
        return ["knockout", "--dataset", v["facts"], "--all-facts", "--n-facts", "20", "--window", "1", *common]
    if sweep == "stats":
        return ["neurons", "stats", "--corpus", v["corpus"], "--max-len", "16", "--batch-size", "2",
                "--save-every", str(SNAPSHOT_EVERY), *common]
    if sweep == "probe":
        return ["probe", "--dataset", f"nqswap:{v['nq']}", "--demos", "1", "--components", "resid,mlp,attn",
                "--seeds", "1", "--batch-size", "8", *common]
    raise ValueError(sweep)


# ---------------------------------------------------------------------- what a sweep has written
def _logs(out: Path) -> list[Path]:
    return sorted(out.rglob("items.jsonl"))


def log_records(out: Path) -> dict[str, dict]:
    """Every sweep log under ``out`` read the way a resuming run reads it: {log path: {id: result}}."""
    from interp.sweep import read_log
    return {str(p.relative_to(out)): read_log(p)[0] for p in _logs(out)}


def progress(sweep: str, out: Path) -> int:
    """Finished units so far: log records, state snapshots' batches, or activation shards."""
    if sweep == "stats":  # batches covered by the last snapshot of each pass (one log per pass)
        return sum(int(r["__state__"].get("batches", 0)) for r in log_records(out).values() if "__state__" in r)
    if sweep == "probe":
        n = 0
        for m in out.rglob("manifest.json"):
            try:
                n += len(json.loads(m.read_text())["shards"])
            except (ValueError, KeyError):
                pass
        return n + sum(len(r) for r in log_records(out).values())
    return sum(len(r) for r in log_records(out).values())


def compare(sweep: str, ref: Path, run: Path) -> list[str]:
    """Differences between the uninterrupted and the killed-and-resumed output (empty: identical)."""
    diffs = []
    skip_json = {"total_seconds", "seconds"}
    for p in sorted(ref.rglob("*")):
        if not p.is_file() or p.suffix in (".html", ".png", ".pdf", ".tmp", ".js") or p.name == "items.jsonl" \
                or p.name.startswith("state-"):
            continue
        q = run / p.relative_to(ref)
        if not q.exists():
            diffs.append(f"{p.relative_to(ref)} missing")
            continue
        if p.suffix == ".json":
            a, b = json.loads(p.read_text()), json.loads(q.read_text())
            if isinstance(a, dict):
                a = {k: v for k, v in a.items() if k not in skip_json}
                b = {k: v for k, v in b.items() if k not in skip_json}
            if p.name == "manifest.json":  # byte sizes and shapes must agree; list order is the shards'
                a, b = a["shards"], b["shards"]
            if a != b:
                diffs.append(f"{p.relative_to(ref)} differs")
        elif p.read_bytes() != q.read_bytes():
            diffs.append(f"{p.relative_to(ref)} differs (bytes)")
    a, b = log_records(ref), log_records(run)
    for log in sorted(set(a) | set(b)):
        ra, rb = a.get(log, {}), b.get(log, {})
        ra = {k: v for k, v in ra.items() if k != "__state__"}
        rb = {k: v for k, v in rb.items() if k != "__state__"}
        lost = sorted(set(ra) - set(rb))
        extra = sorted(set(rb) - set(ra))
        changed = sorted(k for k in set(ra) & set(rb) if ra[k] != rb[k])
        if lost or extra or changed:
            diffs.append(f"{log}: lost {lost[:5]}, extra {extra[:5]}, changed {changed[:5]}")
    return diffs


# ---------------------------------------------------------------------- running and killing
class Runner:
    """Start ``interp ARGS`` as a process that can be SIGKILLed (forked from a warm parent, or exec'd)."""

    def __init__(self, mode: str = "fork", env: dict | None = None, preload: list[str] = ()):
        self.mode = mode
        # figures as HTML only (PNG/PDF export would start a Chromium in every run); one torch thread:
        # tiny matrices gain nothing from two, and on a busy machine two threads are ~10x slower
        self.env = {**os.environ, "INTERP_FIGURE_FORMATS": "html", "OMP_NUM_THREADS": "1", **(env or {})}
        if mode == "fork":  # import once here, load the models once; children inherit both
            import interp.attention.knockout  # noqa: F401
            import interp.cli  # noqa: F401
            import interp.mediation.causal_trace  # noqa: F401
            import interp.neurons.stats  # noqa: F401
            import probes.cli  # noqa: F401
            from conftest import cached_loads
            cached_loads()
            import interp.loading
            for name in preload:
                interp.loading.load(name)

    def start(self, argv: list[str], log: Path):
        if self.mode == "exec":
            f = open(log, "ab")
            p = subprocess.Popen([sys.executable, "-m", "interp", *argv], stdout=f, stderr=f, env=self.env)
            f.close()
            return p.pid
        pid = os.fork()
        if pid == 0:  # child: the CLI, nothing else
            try:
                os.environ.update(self.env)
                import torch
                torch.set_num_threads(int(self.env["OMP_NUM_THREADS"]))
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                from interp.cli import main
                rc = main(argv)
                sys.stdout.flush()
                sys.stderr.flush()
            except BaseException:  # noqa: BLE001
                rc = 99
            os._exit(rc)
        return pid

    @staticmethod
    def wait(pid: int, timeout: float | None = None) -> int | None:
        """Exit status (negative = killed by that signal), or None if still running after ``timeout``."""
        t0 = time.perf_counter()
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            if timeout is not None and time.perf_counter() - t0 > timeout:
                return None
            time.sleep(0.005)


@dataclass
class SweepReport:
    sweep: str
    argv: list[str]
    ref_seconds: float = 0.0
    ref_setup_seconds: float = 0.0
    ref_units: int = 0
    kills: list[dict] = field(default_factory=list)
    finished_early: int = 0
    final_rc: int | None = None
    torn_lines: int = 0
    diffs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.diffs and self.final_rc == 0 and len(self.kills) > 0


def _tear(sweep: str, out: Path, rng: random.Random) -> bool:
    """Append a torn record (a prefix of the log's last line) to one sweep log: a kill mid-write."""
    logs = [p for p in _logs(out) if p.stat().st_size > 0]
    if not logs:
        return False
    p = rng.choice(logs)
    last = p.read_bytes().rstrip(b"\n").split(b"\n")[-1]
    with open(p, "ab") as f:
        f.write(last[:rng.randint(1, max(1, len(last) - 1))])
    return True


def kill_and_resume(sweep: str, v: dict[str, str], work: Path, runner: Runner, *, kills: int = 10, seed: int = 0,
                    tear: bool = True, timeout: float = 600) -> SweepReport:
    rng = random.Random(f"{sweep}-{seed}")
    ref, run = work / f"{sweep}-ref", work / f"{sweep}-run"
    for d in (ref, run):
        if d.exists():
            import shutil
            shutil.rmtree(d)
    rep = SweepReport(sweep, command(sweep, v, "OUT"))
    # 1. the uninterrupted reference (its set-up time: until the first unit is written)
    t0 = time.perf_counter()
    pid = runner.start(command(sweep, v, str(ref)), work / f"{sweep}-ref.log")
    setup = None
    while (rc := runner.wait(pid, timeout=0.02)) is None:
        if setup is None and progress(sweep, ref) > 0:
            setup = time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            raise RuntimeError(f"{sweep}: reference run took over {timeout} s")
    rep.ref_seconds = time.perf_counter() - t0
    rep.ref_setup_seconds = setup if setup is not None else rep.ref_seconds * 0.5
    rep.ref_units = progress(sweep, ref)
    if rc != 0:
        raise RuntimeError(f"{sweep}: reference run exited {rc}; see {work / f'{sweep}-ref.log'}")
    work_s = max(rep.ref_seconds - rep.ref_setup_seconds, 0.05)
    unit_s = work_s / max(rep.ref_units, 1)
    grain = SNAPSHOT_EVERY if sweep == "stats" else 1  # progress moves by this many units at a time
    # 2. kill at random moments, resume each time: the kill moments, as "units finished before the
    #    kill", are drawn up front (sorted, uniform over the sweep); each kill then waits for its target
    #    and a uniform delay within the next unit — or, when the target was already passed, a
    #    uniform moment within the resume's set-up
    argv = command(sweep, v, str(run))
    targets = sorted(rng.randrange(0, rep.ref_units) for _ in range(kills))
    resume_setup = rep.ref_setup_seconds / 2  # refined by the resumed runs' time to their first unit
    for target in targets:
        before = progress(sweep, run)
        t = time.perf_counter()
        pid = runner.start(argv, work / f"{sweep}-run.log")
        if target <= before:
            rc = runner.wait(pid, timeout=rng.uniform(0, resume_setup))
        else:
            while (rc := runner.wait(pid, timeout=0.005)) is None and progress(sweep, run) < target:
                pass
            if rc is None:
                if progress(sweep, run) > before:
                    resume_setup = min(resume_setup, time.perf_counter() - t)
                rc = runner.wait(pid, timeout=rng.uniform(0, unit_s * grain))
        if rc is not None:  # finished (or failed) before the kill moment
            rep.finished_early += 1
            if rc != 0:
                raise RuntimeError(f"{sweep}: resumed run exited {rc}; see {work / f'{sweep}-run.log'}")
            break
        os.kill(pid, signal.SIGKILL)
        runner.wait(pid)
        after = progress(sweep, run)
        torn = tear and len(rep.kills) % 2 == 1 and _tear(sweep, run, rng)
        rep.kills.append({"at_s": round(time.perf_counter() - t, 3), "target_units": target, "units_before": before,
                          "units_after": after, "torn_record_appended": bool(torn)})
    # 3. finish, then compare
    pid = runner.start(argv, work / f"{sweep}-run.log")
    rep.final_rc = runner.wait(pid, timeout=timeout)
    from interp.sweep import read_log
    rep.torn_lines = sum(read_log(p)[1] for p in _logs(run))
    rep.diffs = compare(sweep, ref, run)
    return rep

