"""The chunked loss: same value and gradients as cross-entropy over the full logits, and a safe fallback.

Real tiny models on CPU (a Llama built in-process, a Gemma 2 from a config); no fakes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def _model(model_dir: Path, method: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    from peft_operator.api.methods import Method
    from peft_runtime.train.methods import MethodContext, attach_adapter, load_base_model, method_setup

    cpu = torch.device("cpu")
    setup = method_setup(Method.model_validate(method), MethodContext(model_dir, cpu))
    model = attach_adapter(load_base_model(model_dir, setup, torch.float32, cpu), setup)
    model.train()
    return model, setup


def _batch(vocab: int) -> Any:
    import torch

    from peft_runtime.train.batches import collate
    from peft_runtime.train.data import IGNORE, Example

    generator = torch.Generator().manual_seed(3)
    examples = []
    for length in (17, 11, 23):
        ids = torch.randint(1, vocab, (length,), generator=generator).tolist()
        targets = [*ids[1:], IGNORE]
        targets[:4] = [IGNORE] * 4  # a prompt without loss, as in instruction data
        examples.append(Example(ids, targets))
    return collate(examples, [[0], [1], [2]], 0, packed=False)


def _loss_and_gradients(model: Any, loss_of: Any, batch: Any) -> tuple[float, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    loss = loss_of(batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "method",
    [
        {"type": "lora", "lora": {"r": 4, "dropout": 0.0}},
        {"type": "prompt", "prompt": {"numVirtualTokens": 5}},
        {"type": "prefix", "prefix": {"numVirtualTokens": 5}},
        {"type": "adapter"},
    ],
    ids=lambda m: m["type"],
)
def test_chunked_loss_matches_full_logits_in_value_and_gradients(tiny_model_dir: Path, method: dict[str, Any]) -> None:
    import torch

    from peft_runtime.train.loss import AnswerLoss

    torch.manual_seed(0)
    model, setup = _model(tiny_model_dir, method)
    batch = _batch(model.get_base_model().config.vocab_size)
    chunked = AnswerLoss(model, setup)
    assert chunked.chunked, "a Llama's logits are its output layer of the hidden states"
    chunked.rows_per_chunk = 7  # several chunks, the last one short, for the tiny vocabulary
    assert batch.loss_tokens > 3 * chunked.rows_per_chunk
    full = AnswerLoss(model, setup)
    full.chunked = False

    loss, gradients = _loss_and_gradients(model, chunked, batch)
    expected_loss, expected_gradients = _loss_and_gradients(model, full, batch)

    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert gradients.keys() == expected_gradients.keys() and gradients
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, expected_gradients[name], rtol=1e-4, atol=1e-6), name
    assert model.get_base_model().get_output_embeddings() is not None
    assert not isinstance(model.get_base_model().get_output_embeddings(), torch.nn.Identity)  # restored


def test_a_model_that_post_processes_its_logits_keeps_the_full_logits_path(tmp_path: Path) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from peft_runtime.train.loss import AnswerLoss

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=2.0,  # logits = 2 * tanh(head(hidden) / 2): not the output layer alone
    )
    Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    model, setup = _model(tmp_path, {"type": "lora", "lora": {"r": 4, "targetModules": ["q_proj", "v_proj"]}})
    loss_of = AnswerLoss(model, setup)
    assert not loss_of.chunked

    batch = _batch(config.vocab_size)
    keep = batch.targets != -100
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = F.cross_entropy(logits[keep].float(), batch.targets[keep], reduction="sum")
    assert float(loss_of(batch)) == pytest.approx(float(expected), rel=1e-5)
