"""A BERT encoder layer written out by hand, as in the original BERT code: word, position and
token-type embeddings, multi-head self-attention with an additive padding mask, residual +
LayerNorm, and a GELU feed-forward."""

from __future__ import annotations

import math

import torch
from torch import nn


class BertEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.token_type_embeddings = nn.Embedding(2, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(0.1)
        self.register_buffer("position_ids", torch.arange(max_positions).expand((1, -1)),
                             persistent=False)

    def forward(self, input_ids):
        position_ids = self.position_ids[:, :input_ids.size(1)]
        token_type_ids = torch.zeros_like(input_ids)
        embeddings = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
                      + self.position_embeddings(position_ids))
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(0.1)

    def split_heads(self, x):
        x = x.view(x.size()[:-1] + (self.num_heads, self.head_size))
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, additive_mask):
        query = self.split_heads(self.query(hidden_states))
        key = self.split_heads(self.key(hidden_states))
        value = self.split_heads(self.value(hidden_states))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_size)
        probs = self.dropout(torch.softmax(scores + additive_mask, dim=-1))
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
        return context.view(context.size()[:-2] + (self.num_heads * self.head_size,))


class BertLayer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, eps: float):
        super().__init__()
        self.attention = BertSelfAttention(hidden_size, num_heads)
        self.attention_output = nn.Linear(hidden_size, hidden_size)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.intermediate = nn.Linear(hidden_size, intermediate_size)
        self.activation = nn.GELU()
        self.output = nn.Linear(intermediate_size, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states, additive_mask):
        attended = self.attention_output(self.attention(hidden_states, additive_mask))
        hidden_states = self.attention_norm(self.dropout(attended) + hidden_states)
        feed_forward = self.output(self.activation(self.intermediate(hidden_states)))
        return self.output_norm(self.dropout(feed_forward) + hidden_states)


class BertEncoder(nn.Module):
    """Token ids and a padding mask (1 or True = attend) in, hidden states out."""

    def __init__(self, vocab_size: int = 100, hidden_size: int = 32, num_heads: int = 4,
                 intermediate_size: int = 64, max_positions: int = 16, eps: float = 1e-12):
        super().__init__()
        self.embeddings = BertEmbeddings(vocab_size, hidden_size, max_positions, eps)
        self.layer = BertLayer(hidden_size, num_heads, intermediate_size, eps)

    def forward(self, input_ids, attention_mask):
        # [N, S] -> [N, 1, 1, S]: 0 where attended, -10000 at padding, added to every head's scores.
        hidden_states = self.embeddings(input_ids)
        # In the model's own precision, as transformers' extended attention mask is.
        additive_mask = (1.0 - attention_mask[:, None, None, :].to(hidden_states.dtype)) * -10000.0
        return self.layer(hidden_states, additive_mask)


def bert_encoder(seed: int = 0) -> BertEncoder:
    torch.manual_seed(seed)
    return BertEncoder()
