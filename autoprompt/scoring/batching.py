"""Packing sequences into batches by a token budget, and padding them."""

from __future__ import annotations

import torch

DEFAULT_BATCH_TOKENS = 4096
MAX_ROWS = 256  # rows per batch: bounds the copied prefix KV cache


def pack_batches(lengths: list[int], batch_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices grouped into batches, longest first, each at most ``batch_tokens`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if (batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens
                and (max_rows is None or len(batches[-1]) < max_rows)):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pad_right(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, [batch, max_len]; positions stay those of the text."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, s in enumerate(sequences):
        ids[r, : len(s)] = torch.as_tensor(s)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)
