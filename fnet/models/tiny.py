"""Tiny randomly initialised causal LMs and a byte-level tokenizer, built in code so tests need no download.

``load_model("tiny:gpt2")``, ``tiny:llama`` and ``tiny:chatglm`` (a sequence-first stand-in,
:mod:`fnet.models.tiny_chatglm`) come from :func:`tiny_model`.
"""

from __future__ import annotations

import torch

from fnet.models.tiny_chatglm import TinyChatGLMConfig, TinyChatGLMForCausalLM

__all__ = ["byte_tokenizer", "TINY_VOCAB", "tiny_config", "tiny_model"]


# --------------------------------------------------------------------------------------------------------------
# Tiny random models for tests (no download)
# --------------------------------------------------------------------------------------------------------------
def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + ``<|endoftext|>``. Built in code so tests need
    no download; it has offsets and a real ``tokenizers`` backend like the hub tokenizers.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        The tokenizer (257 tokens; ``<|endoftext|>`` is its eos, pad and bos token).
    """
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
    """The transformers config of the tiny random ``family`` model (``gpt2`` or ``llama``) that tests use.

    Parameters
    ----------
    family : str
        ``"gpt2"``, ``"llama"`` or ``"chatglm"``; another raises a ValueError.

    Returns
    -------
    transformers.PretrainedConfig
        A 3-layer config with the byte tokenizer's vocabulary (257).
    """
    from transformers import GPT2Config, LlamaConfig

    if family == "gpt2":
        return GPT2Config(
            vocab_size=TINY_VOCAB,
            n_positions=128,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_inner=None,
            bos_token_id=256,
            eos_token_id=256,
            pad_token_id=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=256,
            eos_token_id=256,
            pad_token_id=256,
            tie_word_embeddings=False,
        )
    if family == "chatglm":
        return TinyChatGLMConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=32,
            ffn_hidden_size=40,
            num_layers=3,
            num_attention_heads=4,
            pad_token_id=256,
            eos_token_id=256,
        )
    raise ValueError(f"unknown tiny family {family!r}; valid: ['gpt2', 'llama', 'chatglm']")


def tiny_model(family: str, seed: int = 0):
    """A randomly initialised tiny model of a registry family, and the byte tokenizer. Deterministic per seed.

    ``seed`` decides the weights only: they are drawn inside :func:`torch.random.fork_rng`, so the global RNG is
    as the caller left it (a training run's ``pl.seed_everything(seed)`` still decides its head and data order).

    Parameters
    ----------
    family : str
        ``"gpt2"``, ``"llama"`` or ``"chatglm"`` (see :func:`tiny_config`).
    seed : int
        Seed of the weights (default 0).

    Returns
    -------
    model : transformers.PreTrainedModel
        The model, in eval mode.
    tokenizer : transformers.PreTrainedTokenizerFast
        :func:`byte_tokenizer`.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(7); before = torch.random.get_rng_state()
    >>> _ = tiny_model("gpt2", seed=1)
    >>> torch.equal(torch.random.get_rng_state(), before)
    True
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    with torch.random.fork_rng(devices=[]):  # built on the CPU: only its RNG is forked and restored
        torch.manual_seed(seed)
        if family == "chatglm":
            model = TinyChatGLMForCausalLM(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model, byte_tokenizer()
