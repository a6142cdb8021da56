"""The encoder's last layer computed only at the positions a head reads.

FillMask reads the last hidden state at its masks, NextSentence and ClassifySequence at [CLS]
(through the pooler); the rest of the last layer's output is thrown away, yet the model's own
forward computes it. In that last layer only the keys and values need every position: the query
projection, the attention output, both feed-forward layers and the layer norms are needed at the
read positions alone. For bert-base that is 5.9 M of a layer's 7.1 M weights per token, about
7 % of the encoder's linear-layer work on any input with few read positions (what it brought,
measured through the server: docs/benchmarks.md, "Optimisations").

`ReadPositions.install(model)` puts a stand-in forward on the last layer of a BERT encoder
(transformers' `BertLayer`, not a decoder, no cross-attention; anything else: None, and the
model runs unchanged). Inside `with read.at(positions):` (`positions`: a (batch, K) tensor of
token positions per sequence) the encoder returns a (batch, K, hidden) last hidden state, row k
of sequence b being what the full pass gives at `positions[b, k]`; outside it, the layer runs in
full. The setting is per thread. The attention mask is read from its first query row: BERT's
mask is a key-padding mask, alike for every query, and position 0 ([CLS]) is never padding.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class ReadPositions:
    def __init__(self, layer: torch.nn.Module) -> None:
        self._layer = layer
        self._full = layer.forward
        self._local = threading.local()
        layer.forward = self._forward  # an instance attribute: module names and weights unchanged

    @classmethod
    def install(cls, model: Any) -> ReadPositions | None:
        from transformers.models.bert.modeling_bert import BertLayer

        layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
        if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
            return None
        last = layers[-1]
        if type(last) is not BertLayer or last.is_decoder or last.add_cross_attention:
            return None
        if model.config._attn_implementation not in ("sdpa", "eager"):
            return None
        return cls(last)

    @contextlib.contextmanager
    def at(self, positions: torch.Tensor) -> Iterator[None]:
        self._local.positions = positions
        try:
            yield
        finally:
            self._local.positions = None

    def _forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kw: Any) -> Any:
        positions = getattr(self._local, "positions", None)
        if positions is None:
            return self._full(hidden_states, attention_mask, *args, **kw)
        return _layer_at(self._layer, hidden_states, attention_mask, positions)


def _layer_at(layer: Any, hidden: torch.Tensor, mask: Any, positions: torch.Tensor) -> torch.Tensor:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward
    from transformers.pytorch_utils import apply_chunking_to_forward

    batch, length, _ = hidden.shape
    k = positions.shape[1]
    picked = hidden[torch.arange(batch, device=hidden.device).unsqueeze(1), positions]
    attention = layer.attention.self
    heads, size = attention.num_attention_heads, attention.attention_head_size
    query = attention.query(picked).view(batch, k, heads, size).transpose(1, 2)
    key = attention.key(hidden).view(batch, length, heads, size).transpose(1, 2)
    value = attention.value(hidden).view(batch, length, heads, size).transpose(1, 2)
    if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-2] != 1:
        mask = mask[:, :, :1, :]
    implementation = attention.config._attn_implementation
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    scaling = attention.scaling
    context, _ = interface(attention, query, key, value, mask, dropout=0.0, scaling=scaling, is_causal=False)
    attended = layer.attention.output(context.reshape(batch, k, -1), picked)
    out: torch.Tensor = apply_chunking_to_forward(
        layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, attended
    )
    return out


def mask_slots(rows: np.ndarray[Any, Any], cols: np.ndarray[Any, Any], batch: int) -> tuple[Any, Any]:
    """For masks at (rows[i], cols[i]): a (batch, K) position array for `ReadPositions.at`, K the
    most masks in one sequence (unused slots read position 0), and each mask's slot in its row."""
    slots = np.zeros(len(rows), dtype=np.int64)
    seen = np.zeros(batch, dtype=np.int64)
    for i, row in enumerate(rows.tolist()):
        slots[i] = seen[row]
        seen[row] += 1
    positions = np.zeros((batch, max(1, int(seen.max(initial=0)))), dtype=np.int64)
    positions[rows, slots] = cols
    return positions, slots
