"""Streaming activation cache: shards, manifest, kill-and-resume, corruption checks."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny
from interp.cache import ShardedActivations, extract_activations
from interp.errors import CacheShardError, PromptError

SCRIPT = Path(__file__).parent / "scripts" / "extract_tiny.py"


def test_killed_extraction_resumes_to_identical_files(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(SCRIPT), str(full)], check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(killed), "0.3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once at least one shard (of 6) is finished
        m = killed / "manifest.json"
        if m.exists() and len(json.loads(m.read_text())["shards"]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((killed / "manifest.json").read_text())
    assert 2 <= len(state["shards"]) < 6 and not state["complete"]
    subprocess.run([sys.executable, str(SCRIPT), str(killed)], check=True, capture_output=True)
    names = sorted(p.name for p in full.iterdir())
    assert names == sorted(p.name for p in killed.iterdir())
    for n in names:
        assert (full / n).read_bytes() == (killed / n).read_bytes(), n
    acts = ShardedActivations(killed)
    assert acts.complete and acts.load("resid_post", 2).shape == (60, 2, 48)
    assert acts.load("mlp_post", 0).shape == (60, 2, 96)


def test_shards_equal_in_memory_run(tmp_path):
    m = tiny("gpt2")
    prompts = [f"Short text {i}" + " word" * i for i in range(9)]
    acts = extract_activations(m, prompts, ["resid_post"], tmp_path, positions=[-1], batch_size=4,
                               shard_rows=4, progress=False)
    ref = m.run(prompts, reads=["resid_post"], positions=[-1]).cache
    for l in range(m.n_layers):
        assert (acts.load("resid_post", l) - ref["resid_post", l]).abs().max() < 1e-5


def test_corrupt_or_mismatched_shards_are_refused(tmp_path):
    m = tiny("llama")
    prompts = [f"Example {i} text" for i in range(8)]
    extract_activations(m, prompts, ["resid_post"], tmp_path, batch_size=4, shard_rows=4, progress=False)
    shard = tmp_path / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheShardError, match="truncated"):
        ShardedActivations(tmp_path).load("resid_post", 0)
    shard.write_bytes(b"\x00" * len(data))
    with pytest.raises(CacheShardError, match="corrupt"):
        ShardedActivations(tmp_path).load("resid_post", 0)
    with pytest.raises(CacheShardError, match="other arguments"):
        extract_activations(m, prompts[:5], ["resid_post"], tmp_path, batch_size=4, shard_rows=4, progress=False)
    with pytest.raises(CacheShardError, match="was not extracted"):
        ShardedActivations(tmp_path).load("mlp_out", 0)
    with pytest.raises(CacheShardError, match="not an activation cache"):
        ShardedActivations(tmp_path / "nothing")
    with pytest.raises(PromptError, match="no prompts"):
        extract_activations(m, [], ["resid_post"], tmp_path / "x")
