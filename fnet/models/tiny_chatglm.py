"""A tiny ChatGLM-shaped causal LM for tests: same module paths and the same *sequence-first* layout as
THUDM/chatglm3 (``transformer.encoder.layers[i].mlp.dense_4h_to_h``, hidden states ``[seq, batch, hidden]``).

ChatGLM ships as remote code that cannot be downloaded here, so this stand-in exists only so that fnet's
recording and masking are tested on that layout. It is not a faithful ChatGLM (no rotary embeddings, no
multi-query attention); it only has to put tensors in the same places and shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class TinyChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(
        self,
        vocab_size: int = 257,
        hidden_size: int = 32,
        ffn_hidden_size: int = 40,
        num_layers: int = 2,
        num_attention_heads: int = 4,
        max_position_embeddings: int = 256,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)


class GLMMLP(nn.Module):
    """SwiGLU MLP with ChatGLM's names: ``dense_h_to_4h`` -> swiglu -> ``dense_4h_to_h``."""

    def __init__(self, config: TinyChatGLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [seq, batch, hidden]
        gate, up = self.dense_h_to_4h(hidden_states).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMSelfAttention(nn.Module):
    def __init__(self, config: TinyChatGLMConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        seq, batch, hidden = hidden_states.shape
        q, k, v = self.query_key_value(hidden_states).chunk(3, dim=-1)  # each [seq, batch, hidden]

        def heads(x):  # [seq, batch, hidden] -> [batch, heads, seq, head_dim]
            return x.view(seq, batch, self.n_heads, hidden // self.n_heads).permute(1, 2, 0, 3)

        causal = torch.ones(seq, seq, dtype=torch.bool, device=hidden_states.device).tril()
        allowed = causal[None, None]
        if key_padding is not None:  # [batch, seq] True = real token
            allowed = allowed & key_padding[:, None, None, :].bool()
            allowed = allowed | torch.eye(seq, dtype=torch.bool, device=hidden_states.device)  # no empty rows
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=allowed)
        out = out.permute(2, 0, 1, 3).reshape(seq, batch, hidden)
        return self.dense(out)


class GLMBlock(nn.Module):
    def __init__(self, config: TinyChatGLMConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size)
        self.self_attention = GLMSelfAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size)
        self.mlp = GLMMLP(config)

    def forward(self, hidden_states, key_padding):
        hidden_states = hidden_states + self.self_attention(self.input_layernorm(hidden_states), key_padding)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class GLMEncoder(nn.Module):
    def __init__(self, config: TinyChatGLMConfig):
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size)

    def forward(self, hidden_states, key_padding):
        for layer in self.layers:
            hidden_states = layer(hidden_states, key_padding)
        return self.final_layernorm(hidden_states)


class GLMEmbedding(nn.Module):
    def __init__(self, config: TinyChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids):  # [batch, seq] -> [seq, batch, hidden]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        return embedded.transpose(0, 1).contiguous()


class GLMTransformer(nn.Module):
    def __init__(self, config: TinyChatGLMConfig):
        super().__init__()
        self.embedding = GLMEmbedding(config)
        self.encoder = GLMEncoder(config)
        self.output_layer = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None):
        hidden = self.encoder(self.embedding(input_ids), attention_mask)  # [seq, batch, hidden]
        return self.output_layer(hidden).transpose(0, 1)  # logits [batch, seq, vocab], as ChatGLM returns


class TinyChatGLMForCausalLM(PreTrainedModel):
    config_class = TinyChatGLMConfig
    base_model_prefix = "transformer"

    def __init__(self, config: TinyChatGLMConfig):
        super().__init__(config)
        self.transformer = GLMTransformer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.embedding.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self.transformer(input_ids, attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)
