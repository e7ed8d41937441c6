"""Prefix tuning and prompt tuning on the built-in engine, and the inputs of a prefill step.

Both methods learn virtual tokens the model attends to before the prompt:
- prompt tuning: embeddings put in front of the prompt's token embeddings (positions 0..n-1, the prompt
  after them), as peft's forward does in training;
- prefix tuning: per-layer keys and values already in the KV cache before the prompt; the prompt's
  positions start at n, as in training (peft offsets them by the prefix length).

With transformers 5.24 / peft 0.21.2, peft's own `generate` ignores a learned prefix (the output is the
base model's) and loses a soft prompt after the first token; its forward pass without a cache uses both.
The engine therefore does not use peft for these methods: `prefill_inputs` lays out each row as
[prefix KV | left padding, soft prompt, prompt] in the batch's own cache and mask, and decoding then runs
on that cache like any other row (no extra cost per generated token; the prefill has n more columns).
Rows of different adapters, of other methods, and the base model share the prefill and every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..common.errors import AdapterCorrupt, IncompatibleBaseModel

_WEIGHTS_KEY = "prompt_embeddings"  # what peft saves for both methods (the projected prefix, if projected)


@dataclass(frozen=True)
class SoftPrompt:
    embeddings: torch.Tensor  # [n, hidden]

    @property
    def length(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass(frozen=True)
class Prefix:
    keys: torch.Tensor  # [layers, kv heads, n, head dim]
    values: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])


VirtualTokens = SoftPrompt | Prefix


def read_virtual_tokens(
    name: str, peft_type: str, weights: dict[str, torch.Tensor], model_config: Any, *, dtype: Any, device: str
) -> VirtualTokens:
    """The adapter's soft prompt or prefix, checked against the model's hidden size or KV-cache shape."""
    learned = weights.get(_WEIGHTS_KEY)
    if learned is None or learned.dim() != 2:
        raise AdapterCorrupt(f"adapter '{name}' has no {_WEIGHTS_KEY} matrix: it is not a saved {peft_type} adapter")
    learned = learned.to(device=device, dtype=dtype)
    count = learned.shape[0]
    if peft_type == "PROMPT_TUNING":
        if learned.shape[1] != model_config.hidden_size:
            raise IncompatibleBaseModel(
                f"adapter '{name}' has soft-prompt embeddings of width {learned.shape[1]}; this model's hidden size "
                f"is {model_config.hidden_size}: it was trained on a different base model"
            )
        return SoftPrompt(learned)
    layers, kv_heads, head_dim = _cache_shape(model_config)
    if learned.shape[1] != layers * 2 * kv_heads * head_dim:
        raise IncompatibleBaseModel(
            f"adapter '{name}' has a prefix of {learned.shape[1]} values per token; this model's KV cache needs "
            f"{layers} layers x 2 x {kv_heads} heads x {head_dim}: it was trained on a different base model"
        )
    # peft's layout (PeftModel.get_prompt): [n, layers * 2, heads, head dim], keys then values per layer
    per_layer = learned.view(count, layers, 2, kv_heads, head_dim).permute(2, 1, 3, 0, 4)
    return Prefix(keys=per_layer[0].contiguous(), values=per_layer[1].contiguous())


def _cache_shape(config: Any) -> tuple[int, int, int]:
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers), kv_heads, head_dim


@dataclass
class PrefillInputs:
    input_ids: torch.Tensor  # [rows, width]: left padding, a placeholder per soft-prompt token, the prompt
    soft_prompts: list[tuple[int, int, torch.Tensor]]  # (row, first column, embeddings) to write over them
    mask: torch.Tensor  # [rows, prefix width + width]
    positions: torch.Tensor  # [rows, width]
    cache: Any  # a DynamicCache holding each row's prefix (empty when no row has one)


def prefill_inputs(
    prompts: list[list[int]], virtual: list[VirtualTokens | None], *, pad_id: int, device: str, model_config: Any
) -> PrefillInputs:
    """One left-padded prefill batch; a row's layout does not depend on its neighbours (mask and positions)."""
    from transformers import DynamicCache

    soft = [v.length if isinstance(v, SoftPrompt) else 0 for v in virtual]
    prefix = [v.length if isinstance(v, Prefix) else 0 for v in virtual]
    width = max(s + len(p) for s, p in zip(soft, prompts, strict=True))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    placements = []
    for i, (prompt, tokens) in enumerate(zip(prompts, virtual, strict=True)):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) - soft[i] :] = 1
        if isinstance(tokens, SoftPrompt):
            placements.append((i, width - len(prompt) - soft[i], tokens.embeddings))
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + torch.tensor(prefix)[:, None]
    cache = DynamicCache(config=model_config)
    prefix_mask = _fill_prefixes(cache, virtual, prefix, device)
    return PrefillInputs(
        input_ids=ids.to(device),
        soft_prompts=placements,
        mask=torch.cat([prefix_mask, mask], 1).to(device),
        positions=positions.to(device),
        cache=cache,
    )


def _fill_prefixes(cache: Any, virtual: list[VirtualTokens | None], lengths: list[int], device: str) -> torch.Tensor:
    """Write every row's prefix into the cache's first columns (right-aligned); returns their mask columns."""
    width = max(lengths)
    mask = torch.zeros((len(virtual), width), dtype=torch.long)
    if width == 0:
        return mask
    first = next(v for v in virtual if isinstance(v, Prefix))
    layers, kv_heads, _, head_dim = first.keys.shape
    keys = first.keys.new_zeros((layers, len(virtual), kv_heads, width, head_dim))
    values = torch.zeros_like(keys)
    for i, tokens in enumerate(virtual):
        if isinstance(tokens, Prefix):
            keys[:, i, :, width - tokens.length :] = tokens.keys
            values[:, i, :, width - tokens.length :] = tokens.values
            mask[i, width - tokens.length :] = 1
    for layer in range(layers):
        cache.update(keys[layer], values[layer], layer)
    return mask


def embed_with_soft_prompts(model: Any, input_ids: torch.Tensor, soft_prompts: list[Any]) -> torch.Tensor:
    """The input embeddings (the model's own layer, so per-row LoRA on embeddings applies), soft prompts written
    over their placeholder columns."""
    embeddings: torch.Tensor = model.get_input_embeddings()(input_ids)
    for row, start, soft in soft_prompts:
        embeddings[row, start : start + soft.shape[0]] = soft.to(embeddings.dtype)
    return embeddings
