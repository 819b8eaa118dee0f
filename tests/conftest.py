"""Shared fixtures.

* ``tiny(arch, engine)`` builds a random-weight model of a given family (``llama`` with
  grouped-query attention, ``mistral`` and ``qwen2`` with a sliding window of 4 tokens — qwen2
  with q/k/v biases and mixed full / sliding layers —, ``gpt2``) from a fixed seed, so every engine gets identical weights
  (each call builds a fresh instance: the TransformerLens bridge wraps modules in place).
  It uses the default model's tokenizer (offline), with a small vocabulary-sized embedding.
* ``default_model`` is the real embedded SmolLM2-135M-Instruct, loaded once per session
  (engine ``hf``); ``default_engines`` loads it once per engine.
* ``DATA`` is :func:`interp.datasets.data_dir` (``$INTERP_DATA`` or ``../shared/data``: real
  evaluation sets, read-only, never copied in).
* ``cached_loads()`` makes ``interp.loading.load`` reuse models across in-process CLI runs.

The tests never reach a model hub: ``HF_HUB_OFFLINE=1`` is set before transformers is imported
(also for the CLI subprocesses and notebook kernels they start), so a hub id that is not cached
fails at once instead of after the hub client's network retries.  Figures are written as HTML only
(``INTERP_FIGURE_FORMATS=html``), except where a test exports PNG/PDF on purpose.  ``make test`` runs
the files in two processes (pytest-xdist, ``--dist loadfile``), each with one torch thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Figures are written as HTML only (no Chromium start and PNG/PDF render per figure, ≈ 0.7 s each
# over hundreds of CLI runs); tests/test_report.py exports PNG and PDF for real.
os.environ.setdefault("INTERP_FIGURE_FORMATS", "html")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from interp.datasets import data_dir as _data_dir  # the one place that says where the data is

DATA = _data_dir()

_TOKENIZER = None


def default_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import AutoTokenizer

        from interp.loading import default_model_dir
        _TOKENIZER = AutoTokenizer.from_pretrained(str(default_model_dir()))
    return _TOKENIZER


def tiny_hf(arch: str = "llama", seed: int = 0, n_layers: int = 3):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = len(default_tokenizer())
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=n_layers,
                          num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                          attn_implementation="eager", tie_word_embeddings=False, pad_token_id=2,
                          bos_token_id=1, eos_token_id=2)
        m = LlamaForCausalLM(cfg)
    elif arch == "mistral":
        from transformers import MistralConfig, MistralForCausalLM
        # a sliding window shorter than the test prompts, so the window really masks
        cfg = MistralConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=n_layers,
                            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                            sliding_window=4, attn_implementation="eager", tie_word_embeddings=False,
                            pad_token_id=2, bos_token_id=1, eos_token_id=2)
        m = MistralForCausalLM(cfg)
    elif arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM
        # q/k/v biases; sliding-window layers from layer 1 on (mixed layer types), window 4
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=n_layers,
                          num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                          use_sliding_window=True, sliding_window=4, max_window_layers=1,
                          attn_implementation="eager", tie_word_embeddings=False, pad_token_id=2,
                          bos_token_id=1, eos_token_id=2)
        m = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=48, n_layer=n_layers, n_head=4, n_positions=128,
                         attn_implementation="eager", bos_token_id=1, eos_token_id=2)
        m = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def tiny(arch: str = "llama", engine: str = "hf", seed: int = 0, n_layers: int = 3):
    from interp.model import Model
    return Model(tiny_hf(arch, seed, n_layers), default_tokenizer(), engine, name=f"tiny-{arch}")


def cached_loads():
    """Patch ``interp.loading.load`` to reuse models across in-process runs (a real load on a miss).

    Returns a function that undoes the patch.  Only speed changes: every model still comes from
    the real loader the first time, so unknown models and bad directories fail as they would.
    """
    import interp.loading as loading
    real, cache = loading.load, {}

    def load(name=None, *, engine="hf", device=None, dtype="float32", **kw):
        key = (name, engine, str(device), str(dtype), str(sorted(kw.items())))
        if key not in cache:
            cache[key] = real(name, engine=engine, device=device, dtype=dtype, **kw)
        return cache[key]

    loading.load = load
    return lambda: setattr(loading, "load", real)


@pytest.fixture(scope="session")
def default_model():
    import interp
    return interp.load()


_ENGINE_MODELS: dict = {}


@pytest.fixture(scope="session")
def default_engines():
    """The default model once per engine: {"hf": Model, "transformer_lens": ..., "nnsight": ...}."""
    import interp
    if not _ENGINE_MODELS:
        for e in ("hf", "transformer_lens", "nnsight"):
            _ENGINE_MODELS[e] = interp.load(engine=e)
    return _ENGINE_MODELS


@pytest.fixture
def data_dir() -> Path:
    if not DATA.exists():
        pytest.fail(f"evaluation data not found at {DATA}; set INTERP_DATA to ../shared/data")
    return DATA
