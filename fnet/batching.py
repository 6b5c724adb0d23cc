"""Right padding of token-id rows into one batch, shared by recording, scoring and attribution.

>>> ids, mask = right_pad([[5, 6, 7], [8]], pad_id=0)
>>> ids.tolist(), mask.tolist()
([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["right_pad"]


def right_pad(rows: Sequence[Sequence[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, both ``[batch, longest]``: real tokens first, then ``pad_id``
    (0 when the tokenizer has none; masked out either way)."""
    pad_id = 0 if pad_id is None else int(pad_id)
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)  # [row, pos]
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[b, : len(row)] = 1
    return input_ids, attention_mask
