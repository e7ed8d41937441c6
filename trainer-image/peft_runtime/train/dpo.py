"""Direct preference optimization (Rafailov et al. 2023) on (prompt, chosen, rejected) pairs.

The loss of a pair is -log sigmoid(beta * margin), where margin = (log p(chosen) - log p_ref(chosen)) -
(log p(rejected) - log p_ref(rejected)): the adapter learns to raise the chosen answer's likelihood relative
to the rejected one's, measured against the reference policy. The reference is the base model itself: the
same module with the adapter disabled (peft's `disable_adapter`, and our bottleneck model's), run without
gradients, so there is no second copy of the model in memory. Log-probabilities are summed over each
answer's tokens (the targets the data module set), with the same chunked output layer as the SFT loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .batches import Batch
from .data import IGNORE
from .loss import AnswerLoss


@dataclass
class RewardTally:
    """Implicit rewards over the pairs seen since `reset`: beta x margin per pair (its mean is the reward
    margin) and the share of pairs whose margin is above 0 (the reward accuracy)."""

    pairs: int = 0
    margin_sum: float = 0.0
    preferred: int = 0

    def add(self, margins: torch.Tensor) -> None:
        self.pairs += int(margins.numel())
        self.margin_sum += float(margins.sum())
        self.preferred += int((margins > 0).sum())

    def reset(self) -> None:
        self.pairs, self.margin_sum, self.preferred = 0, 0.0, 0

    @property
    def margin(self) -> float | None:
        return round(self.margin_sum / self.pairs, 6) if self.pairs else None

    @property
    def accuracy(self) -> float | None:
        return round(self.preferred / self.pairs, 4) if self.pairs else None


class PreferenceLoss:
    """`loss(batch)`: the DPO loss summed over a preference batch's pairs (divide by `batch.loss_tokens`)."""

    def __init__(self, answer_loss: AnswerLoss, beta: float):
        self.answer_loss = answer_loss
        self.model = answer_loss.model
        self.beta = beta
        self.tally = RewardTally()

    def __call__(self, batch: Batch) -> torch.Tensor:
        assert batch.pairs, "a DPO loss needs a preference batch (chosen rows, then rejected rows)"
        policy = self.sequence_log_probs(batch)
        was_training = self.model.training
        self.model.eval()  # the reference is the base model as it is, without dropout
        try:
            with torch.no_grad(), self.model.disable_adapter():
                reference = self.sequence_log_probs(batch, adapter_disabled=True)
        finally:
            self.model.train(was_training)
        ratios = policy - reference
        margins = self.beta * (ratios[: batch.pairs] - ratios[batch.pairs :])
        self.tally.add(margins.detach())
        return -F.logsigmoid(margins).sum()

    def sequence_log_probs(self, batch: Batch, adapter_disabled: bool = False) -> torch.Tensor:
        """log p(answer | prompt) of every row: the answer tokens' log-probabilities summed per row."""
        token_log_probs = -self.answer_loss.token_losses(batch, adapter_disabled)
        rows = (batch.targets != IGNORE).nonzero()[:, 0]  # the row of each target, in the same order
        totals = token_log_probs.new_zeros(batch.targets.shape[0])
        return totals.index_add(0, rows, token_log_probs)
