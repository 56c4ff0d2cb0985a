"""torch's own nn.TransformerEncoderLayer (batch first), post-norm and pre-norm."""

from __future__ import annotations

import torch
from torch import nn


class TransformerEncoder(nn.Module):
    def __init__(self, d_model: int = 32, nhead: int = 4, dim_feedforward: int = 64,
                 norm_first: bool = False, activation: str = "relu"):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.1,
                                                activation=activation, batch_first=True,
                                                norm_first=norm_first)

    def forward(self, x):
        return self.layer(x)


def post_norm_encoder(seed: int = 0) -> TransformerEncoder:
    torch.manual_seed(seed)
    return TransformerEncoder(norm_first=False)


def pre_norm_encoder(seed: int = 0) -> TransformerEncoder:
    torch.manual_seed(seed)
    return TransformerEncoder(norm_first=True, activation="gelu")
