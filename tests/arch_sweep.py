"""Tiny random models of every decoder-only causal LM type of the installed transformers (tests only).

:func:`tiny_causal_lm` shrinks a model type's default config (2 layers, width 64, 4 heads, 4 experts, ...) and
builds it on CPU. :func:`sweep_reason` says why a type is not a decoder-only text LM fnet can test, or None."""

from __future__ import annotations

import torch

D_MODEL, D_MLP, N_LAYERS = 64, 96, 2
#: config keys that set a size, and the tiny value (only keys the type's config already has are passed)
SHRINK = {
    "hidden_size": D_MODEL,
    "n_embd": D_MODEL,
    "d_model": D_MODEL,
    "word_embed_proj_dim": D_MODEL,
    "intermediate_size": D_MLP,
    "n_inner": D_MLP,
    "ffn_dim": D_MLP,
    "ffn_hidden_size": D_MLP,
    "moe_intermediate_size": D_MLP,
    "shared_expert_intermediate_size": D_MLP,
    "expert_intermediate_size": D_MLP,
    "num_hidden_layers": N_LAYERS,
    "n_layer": N_LAYERS,
    "num_layers": N_LAYERS,
    "n_layers": N_LAYERS,
    "num_attention_heads": 4,
    "n_head": 4,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "kv_channels": 16,
    "n_head_kv": 2,
    "num_kv_heads": 2,
    "multi_query_group_num": 2,
    "vocab_size": 300,
    "max_position_embeddings": 64,
    "n_positions": 64,
    "n_ctx": 64,
    "num_local_experts": 4,
    "num_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "first_k_dense_replace": 0,
    "n_shared_experts": 1,
    "attention_window_size": 16,
    "sliding_window": 16,
    "pretraining_tp": 1,
    "rotary_dim": 8,
    "partial_rotary_factor": 0.5,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "decoder_start_token_id": 0,
    "max_window_layers": N_LAYERS,
    "q_lora_rank": None,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "topk_group": 1,
    "n_group": 1,
}


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(model_type: str):
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    defaults = config_class()
    known = set(defaults.to_dict()) | set(getattr(defaults, "attribute_map", {}))
    kwargs = {k: v for k, v in SHRINK.items() if k in known}
    if "attention_types" in known:  # GPT-Neo: [[pattern, repeats]] must cover num_layers
        kwargs["attention_types"] = [[["global", "local"], N_LAYERS // 2]]
    if "layer_types" in known and getattr(defaults, "layer_types", None) is not None:
        kwargs["layer_types"] = list(defaults.layer_types)[:N_LAYERS]
    return config_class(**kwargs)


def sweep_reason(model_type: str) -> str | None:
    """Why ``model_type`` is skipped (not a decoder-only text LM buildable from its config), else None."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = CONFIG_MAPPING[model_type]()
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder (masked-LM) model used as a decoder"
    if config.get_text_config() is not config or getattr(config, "sub_configs", None):
        return "multimodal / composite config (the text model has its own type)"
    return None


def tiny_causal_lm(model_type: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type))
    return model.eval()
