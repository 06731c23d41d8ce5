"""The last encoder layer computes only the [CLS] position: the only one a classifier head reads.

BERT's pooler and DistilBERT's head take ``hidden_states[:, 0]`` of the last layer. Every other
position of that layer -- its query, attention output, feed-forward network and layer norms -- is
computed and thrown away. Here the last layer still projects keys and values for all positions (the
[CLS] query attends to them), but everything else runs for one position. The logits and gradients are
the same function of the same weights; for a 6-layer model this is about 1/7 fewer FLOPs per step.

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
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import (
    BertForSequenceClassification,
    BertLayer,
    eager_attention_forward,
)
from transformers.models.distilbert.modeling_distilbert import (
    DistilBertForSequenceClassification,
    TransformerBlock,
)


def _cls_attention(
    attn: nn.Module,
    q: nn.Linear,
    k: nn.Linear,
    v: nn.Linear,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    **kwargs: Any,
) -> torch.Tensor:
    """Multi-head attention of the first position over all positions, with the model's kernel."""
    batch, length, _ = hidden.shape
    head = attn.attention_head_size
    query = q(hidden[:, :1]).view(batch, 1, -1, head).transpose(1, 2)
    key = k(hidden).view(batch, length, -1, head).transpose(1, 2)
    value = v(hidden).view(batch, length, -1, head).transpose(1, 2)
    if mask is not None and mask.dim() == 4:  # (batch, 1, queries or 1, keys): keep the first query's row
        mask = mask[:, :, :1]
    kernel = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    out, _ = kernel(
        attn,
        query,
        key,
        value,
        mask,
        dropout=attn.dropout.p if attn.training else 0.0,
        scaling=attn.scaling,
        **kwargs,
    )
    return out.reshape(batch, 1, -1)


def _bert_layer(
    self: BertLayer,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    kwargs.pop("encoder_attention_mask", None)
    kwargs.pop("past_key_values", None)
    sa = self.attention.self
    attended = _cls_attention(sa, sa.query, sa.key, sa.value, hidden_states, attention_mask, **kwargs)
    return self.feed_forward_chunk(self.attention.output(attended, hidden_states[:, :1]))


def _distilbert_block(
    self: TransformerBlock,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    sa = self.attention
    attended = _cls_attention(sa, sa.q_lin, sa.k_lin, sa.v_lin, hidden_states, attention_mask, **kwargs)
    attended = self.sa_layer_norm(sa.out_lin(attended) + hidden_states[:, :1])
    return self.output_layer_norm(self.ffn(attended) + attended)


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
