"""The training loss: cross-entropy summed over the positions that have a target, in chunks.

A small model's output layer is a large share of its training memory: SmolLM2's 49k-token vocabulary
turns 4 x 256 answer tokens into ~190 MiB of fp32 logits, and cross-entropy keeps two or three tensors
that size for backward, more than the whole 4-bit base model. So the model returns its final hidden
states instead (its output layer is an identity during the forward), and the loss runs the real output
layer over a few hundred positions at a time under activation checkpointing: at most one chunk of logits
is alive, and backward recomputes it (one extra output-layer forward, a few percent of a step).

That holds only where logits are exactly `output_layer(hidden)`. Models that post-process them (Gemma's
soft-capping, Cohere's logit scale) fail a one-off check at start-up and keep the plain, full-logits path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .batches import Batch
from .data import IGNORE
from .methods import MethodSetup

LOGITS_PER_CHUNK = 1 << 24  # elements: 64 MiB of fp32 logits, 341 positions of a 49k vocabulary


class AnswerLoss:
    """`loss(batch)`: summed cross-entropy over the batch's target positions (divide by loss_tokens)."""

    def __init__(self, model: Any, setup: MethodSetup):
        self.model = model
        self.virtual_tokens = setup.virtual_tokens_in_input
        self.causal_lm = model.get_base_model()
        self.chunked = self._logits_are_output_layer_of_hidden()
        output_layer = self.causal_lm.get_output_embeddings()
        vocab = getattr(output_layer, "out_features", None) or self.causal_lm.config.vocab_size
        self.rows_per_chunk = max(1, LOGITS_PER_CHUNK // int(vocab))

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.token_losses(batch).sum()

    def token_losses(self, batch: Batch, adapter_disabled: bool = False) -> torch.Tensor:
        """Cross-entropy at every target position, in row-major order (`batch.targets[targets != IGNORE]`).
        `adapter_disabled`: the model runs as its base (peft's disable_adapter), so prompt tuning's soft
        tokens are not in front of the input."""
        keep = batch.targets != IGNORE
        targets = batch.targets[keep]
        virtual_tokens = 0 if adapter_disabled else self.virtual_tokens
        if not self.chunked:
            logits = self._forward(batch, keep, virtual_tokens).float()
            return F.cross_entropy(logits, targets, reduction="none")
        with self._hidden_states_out() as output_layer:
            hidden = self._forward(batch, keep, virtual_tokens)
        return chunked_cross_entropy(output_layer, hidden, targets, self.rows_per_chunk)

    def _forward(self, batch: Batch, keep: torch.Tensor, virtual_tokens: int) -> torch.Tensor:
        """The model's output at the kept positions only (the output layer never sees the others)."""
        if virtual_tokens:  # prompt tuning puts its soft tokens in front of the input
            keep = torch.cat([keep.new_zeros(keep.shape[0], virtual_tokens), keep], dim=1)
        output = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=keep,
        )
        return output.logits  # type: ignore[no-any-return]

    @contextmanager
    def _hidden_states_out(self) -> Iterator[torch.nn.Module]:
        output_layer = self.causal_lm.get_output_embeddings()
        self.causal_lm.set_output_embeddings(torch.nn.Identity())
        try:
            yield output_layer
        finally:
            self.causal_lm.set_output_embeddings(output_layer)

    @torch.no_grad()
    def _logits_are_output_layer_of_hidden(self) -> bool:
        output_layer = self.causal_lm.get_output_embeddings()
        if output_layer is None:
            return False
        was_training = self.model.training
        self.model.eval()  # no dropout: both forwards must see the same function
        try:
            device = next(p for p in self.model.parameters()).device
            probe = torch.arange(1, 9, device=device).unsqueeze(0) % int(self.causal_lm.config.vocab_size)
            logits = self.model(input_ids=probe, use_cache=False).logits
            with self._hidden_states_out():
                hidden = self.model(input_ids=probe, use_cache=False).logits
            recomputed = output_layer(hidden)
            return recomputed.shape == logits.shape and torch.allclose(
                recomputed.float(), logits.float(), rtol=1e-3, atol=1e-3
            )
        finally:
            self.model.train(was_training)


def chunked_cross_entropy(
    output_layer: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, rows: int
) -> torch.Tensor:
    """cross_entropy(output_layer(hidden[i]), targets[i]) for every i, `rows` positions' logits at a time."""
    if hidden.shape[0] <= rows:
        return _cross_entropy(output_layer, hidden, targets)
    chunks = [
        checkpoint(
            _cross_entropy,
            output_layer,
            hidden[start : start + rows],
            targets[start : start + rows],
            use_reentrant=False,
        )
        for start in range(0, hidden.shape[0], rows)
    ]
    return torch.cat(chunks)


def _cross_entropy(output_layer: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output_layer(hidden).float(), targets, reduction="none")
