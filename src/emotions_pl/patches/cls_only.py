"""The last encoder layer computes only the [CLS] position: the only one a classifier head reads.

BERT's pooler and DistilBERT's head take ``hidden_states[:, 0]`` of the last layer. Every other
position of that layer -- its query, attention output, feed-forward network and layer norms -- is
computed and thrown away. Here the last layer still projects keys and values for all positions (the
[CLS] query attends to them), but everything else runs for one position. The logits and gradients are
the same function of the same weights; for a 6-layer model this is about 1/7 fewer FLOPs per step.

Dropout draws the full layer's noise tensors, in the full layer's order, and keeps the [CLS] slice.
The draws cost little next to the matrix products skipped, and they keep the random stream unchanged:
on the CPU a seeded fp32 run takes the same dropout masks, step for step, as the unpatched model.

Applied to a model in place by swapping the last layer's ``forward`` (parameter names, checkpoints and
``save_pretrained`` folders are unchanged). Only the classes below are patched; any other encoder
runs unchanged.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertLayer
from transformers.models.distilbert.modeling_distilbert import (
    DistilBertForSequenceClassification,
    TransformerBlock,
)


def _dropout_first(
    x: torch.Tensor, dropout: nn.Dropout, full_shape: tuple[int, ...], dim: int
) -> torch.Tensor:
    """``dropout`` of a ``full_shape`` tensor whose slice 0 along ``dim`` is ``x`` (F.dropout's CPU steps)."""
    if not (dropout.training and dropout.p > 0):
        return x
    noise = torch.empty(full_shape, dtype=x.dtype, device=x.device).bernoulli_(1 - dropout.p)
    return x * noise.div_(1 - dropout.p).narrow(dim, 0, 1)


def _cls_attention(
    q: nn.Linear,
    k: nn.Linear,
    v: nn.Linear,
    dropout: nn.Dropout,
    heads: int,
    scaling: float,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Multi-head attention of the first position over all positions (softmax, dropout, sum)."""
    batch, length, _ = hidden.shape
    query = q(hidden[:, :1]).view(batch, 1, heads, -1).transpose(1, 2)
    key = k(hidden).view(batch, length, heads, -1).transpose(1, 2)
    value = v(hidden).view(batch, length, heads, -1).transpose(1, 2)
    scores = query @ key.transpose(2, 3) * scaling  # (batch, heads, 1, length)
    if mask is not None:  # the model's 4-d mask, (batch, 1, queries or 1, keys): the first query's row
        row = mask[:, :, :1]
        scores = (
            scores.masked_fill(~row, torch.finfo(scores.dtype).min)
            if row.dtype == torch.bool
            else scores + row
        )
    probs = _dropout_first(scores.softmax(-1), dropout, (batch, heads, length, length), dim=2)
    return (probs @ value).transpose(1, 2).reshape(batch, 1, -1)


def _bert_layer(
    self: BertLayer,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    sa, so, out = self.attention.self, self.attention.output, self.output
    full = hidden_states.shape
    attended = _cls_attention(
        sa.query,
        sa.key,
        sa.value,
        sa.dropout,
        sa.num_attention_heads,
        sa.scaling,
        hidden_states,
        attention_mask,
    )
    x = so.LayerNorm(_dropout_first(so.dense(attended), so.dropout, full, dim=1) + hidden_states[:, :1])
    return out.LayerNorm(_dropout_first(out.dense(self.intermediate(x)), out.dropout, full, dim=1) + x)


def _distilbert_block(
    self: TransformerBlock,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    sa, ffn = self.attention, self.ffn
    attended = _cls_attention(
        sa.q_lin, sa.k_lin, sa.v_lin, sa.dropout, sa.n_heads, sa.scaling, hidden_states, attention_mask
    )
    x = self.sa_layer_norm(sa.out_lin(attended) + hidden_states[:, :1])
    y = _dropout_first(ffn.lin2(ffn.activation(ffn.lin1(x))), ffn.dropout, hidden_states.shape, dim=1)
    return self.output_layer_norm(y + x)


def apply(model: PreTrainedModel) -> bool:
    """Make ``model``'s last layer [CLS]-only; ``False`` (model untouched) for other architectures."""
    if isinstance(model, BertForSequenceClassification) and not model.config.is_decoder:
        layer, forward = model.bert.encoder.layer[-1], _bert_layer
    elif isinstance(model, DistilBertForSequenceClassification):
        layer, forward = model.distilbert.transformer.layer[-1], _distilbert_block
    else:
        return False
    layer.forward = types.MethodType(forward, layer)
    return True
