"""Which rows go into which micro-batch, and how a micro-batch becomes tensors.

Without packing, rows of similar length share a micro-batch (seeded: shuffle, then sort within windows of
64 batches, then shuffle the batches), so padding to the longest row costs almost nothing. With packing,
rows are first packed into sequences of up to maxSeqLength tokens (first-fit decreasing within windows);
position ids restart at every row, which makes the model's attention block-diagonal: a packed row sees
only itself. An epoch's plan depends only on (seed, epoch), so a resumed run replays the same order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import IGNORE, Example

GROUP_WINDOW = 64  # batches per length-sorting window: large enough to group, small enough to stay random
PACK_WINDOW = 2048  # rows per packing window

# A micro-batch is a list of sequences; a sequence is a list of example indices (one unless packed).
MicroBatch = list[list[int]]


@dataclass(frozen=True)
class EpochPlanner:
    lengths: Sequence[int]
    batch_size: int
    seed: int
    packing: bool
    max_seq_length: int

    def epoch(self, epoch: int) -> list[MicroBatch]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        sequences = self._pack(order) if self.packing else [[i] for i in order]
        window = self.batch_size * GROUP_WINDOW
        batches: list[MicroBatch] = []
        for start in range(0, len(sequences), window):
            chunk = sorted(sequences[start : start + window], key=self._sequence_length, reverse=True)
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        rng.shuffle(batches)
        return batches

    def _sequence_length(self, sequence: list[int]) -> int:
        return sum(self.lengths[i] for i in sequence)

    def _pack(self, order: list[int]) -> list[list[int]]:
        sequences: list[list[int]] = []
        for start in range(0, len(order), PACK_WINDOW):
            bins: list[list[int]] = []
            room: list[int] = []
            for index in sorted(order[start : start + PACK_WINDOW], key=lambda i: self.lengths[i], reverse=True):
                length = self.lengths[index]
                slot = next((b for b, free in enumerate(room) if free >= length), None)
                if slot is None:
                    bins.append([index])
                    room.append(self.max_seq_length - length)
                else:
                    bins[slot].append(index)
                    room[slot] -= length
            sequences.extend(bins)
        return sequences


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L): next token per position, or IGNORE
    attention_mask: torch.Tensor | None  # padded rows only; None when every row is full
    position_ids: torch.Tensor | None  # packed rows: restart at 0 for every row
    tokens: int  # real (non-pad) tokens
    # What the batch's summed loss is divided by: its answer tokens, or for a preference batch its pairs
    # (the DPO loss is one term per pair).
    loss_tokens: int
    pairs: int = 0  # a preference batch: rows [0, pairs) are the chosen answers, [pairs, 2 pairs) the rejected

    def to(self, device: torch.device) -> Batch:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=True)

        return Batch(
            move(self.input_ids),
            move(self.targets),
            None if self.attention_mask is None else move(self.attention_mask),
            None if self.position_ids is None else move(self.position_ids),
            self.tokens,
            self.loss_tokens,
            self.pairs,
        )


def collate(examples: Sequence[Example], micro_batch: MicroBatch, pad_id: int, packed: bool) -> Batch:
    """Right-pad to the longest sequence in this micro-batch (never to maxSeqLength).

    Packed: padding becomes one more segment with its own positions, so no attention mask is needed and
    the model keeps every row separate. Not packed: an attention mask, only if some row is shorter.
    Preference rows (never packed): the chosen sequences, then the rejected ones in the same order."""
    if examples[micro_batch[0][0]].rejected is not None:
        chosen = [examples[index] for sequence in micro_batch for index in sequence]
        rows = chosen + [example.rejected for example in chosen if example.rejected is not None]
        batch = _collate_rows(rows, [[i] for i in range(len(rows))], pad_id, packed=False)
        batch.loss_tokens = batch.pairs = len(chosen)
        return batch
    return _collate_rows(examples, micro_batch, pad_id, packed)


def _collate_rows(examples: Sequence[Example], micro_batch: MicroBatch, pad_id: int, packed: bool) -> Batch:
    """Each sequence of the micro-batch as one padded row (its examples' input_ids and targets only)."""
    rows_ids, rows_targets, rows_positions = [], [], []
    for sequence in micro_batch:
        ids: list[int] = []
        targets: list[int] = []
        positions: list[int] = []
        for index in sequence:
            example = examples[index]
            ids += example.input_ids
            targets += example.targets
            positions += range(len(example.input_ids))
        rows_ids.append(ids)
        rows_targets.append(targets)
        rows_positions.append(positions)
    width = max(len(ids) for ids in rows_ids)
    lengths = [len(ids) for ids in rows_ids]
    input_ids = torch.full((len(rows_ids), width), pad_id, dtype=torch.long)
    target_ids = torch.full((len(rows_ids), width), IGNORE, dtype=torch.long)
    for row, (ids, row_targets) in enumerate(zip(rows_ids, rows_targets, strict=True)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        target_ids[row, : len(ids)] = torch.tensor(row_targets)
    attention_mask = position_ids = None
    if packed:
        position_ids = torch.zeros((len(rows_ids), width), dtype=torch.long)
        for row, positions in enumerate(rows_positions):
            padding = width - len(positions)
            position_ids[row] = torch.tensor(positions + list(range(padding)))
    elif min(lengths) < width:
        attention_mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return Batch(
        input_ids=input_ids,
        targets=target_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        tokens=sum(lengths),
        loss_tokens=int((target_ids != IGNORE).sum()),
    )


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[MicroBatch]:
    """Held-out rows sorted by length, so evaluation pads as little as training."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [[[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
