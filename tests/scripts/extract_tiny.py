"""Run a streaming extraction on a tiny model (used by the kill-and-resume test)."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny  # noqa: E402

from interp.cache import extract_activations  # noqa: E402

out, slow = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
m = tiny("llama")
if slow:  # slow each forward down so the parent can kill us between shards
    orig = m.run
    def run(*a, **k):
        time.sleep(slow)
        return orig(*a, **k)
    m.run = run
prompts = [f"Sentence number {i} says" + " more" * (i % 7) for i in range(60)]
extract_activations(m, prompts, ["resid_post", "mlp_post"], out, positions=[-1, 0], batch_size=5,
                    shard_rows=10, progress=False)
print("done")
