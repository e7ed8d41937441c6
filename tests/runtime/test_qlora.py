"""QLoRA: the frozen base really is 4-bit (bitsandbytes nf4, double quant) and the LoRA weights train."""

from __future__ import annotations

from pathlib import Path


def test_qlora_quantizes_base_to_4bit_and_trains(tiny_model_dir: Path) -> None:
    import bitsandbytes as bnb
    import torch

    from peft_operator.api.methods import Method
    from peft_runtime.train.methods import MethodContext, attach_adapter, load_base_model, method_setup

    method = Method.model_validate({"type": "qlora", "qlora": {"r": 8, "quantization": {"bits": 4}}})
    setup = method_setup(method, MethodContext(tiny_model_dir, torch.device("cpu")))
    assert setup.quantization.load_in_4bit and setup.quantization.bnb_4bit_quant_type == "nf4"
    assert setup.quantization.bnb_4bit_use_double_quant
    assert setup.quantization.bnb_4bit_compute_dtype == torch.float32  # on CPU; bf16 on a GPU
    model = attach_adapter(load_base_model(tiny_model_dir, setup, torch.float32, torch.device("cpu")), setup)

    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # every linear layer of both decoder layers (lm_head stays full precision)
    for module in four_bit:
        assert module.weight.dtype == torch.uint8  # packed 4-bit values
        assert module.weight.quant_state.quant_type == "nf4"
        assert module.weight.quant_state.nested  # double quantization
    packed_bytes = sum(m.weight.numel() for m in four_bit)
    dense_bytes = sum(m.in_features * m.out_features * 4 for m in four_bit)
    assert packed_bytes * 8 == dense_bytes  # 4 bits instead of 32 per weight

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    frozen = four_bit[0].weight.detach().clone()
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    input_ids = torch.randint(0, 700, (4, 24), generator=torch.Generator().manual_seed(0))
    model.train()
    losses = []
    for _ in range(10):
        loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.5
    assert all(not torch.equal(before[n], p) for n, p in trainable.items() if "lora_B" in n)
    assert torch.equal(four_bit[0].weight, frozen)


def test_qlora_keeps_learning_in_every_layer_after_an_eval_mode_forward(tiny_model_dir: Path) -> None:
    """The path that broke on CPUs with AVX512-BF16: a no-grad eval forward (the trainer's probe, eval
    passes) used to repack 4-bit weights for a kernel without autograd. Whatever this CPU is, every LoRA
    tensor of every layer must get a gradient afterwards."""
    import bitsandbytes as bnb
    import torch

    from peft_operator.api.methods import Method
    from peft_runtime.train.methods import MethodContext, attach_adapter, load_base_model, method_setup

    method = Method.model_validate({"type": "qlora", "qlora": {"r": 8, "quantization": {"bits": 4}}})
    setup = method_setup(method, MethodContext(tiny_model_dir, torch.device("cpu")))
    model = attach_adapter(load_base_model(tiny_model_dir, setup, torch.float32, torch.device("cpu")), setup)
    input_ids = torch.randint(0, 700, (2, 16), generator=torch.Generator().manual_seed(1))

    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit)

    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-1)
    for _ in range(2):  # LoRA A gets its first gradient once B has moved off zero
        optimizer.zero_grad()
        model(input_ids=input_ids, labels=input_ids, use_cache=False).loss.backward()
        optimizer.step()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    without_gradient = sorted(n for n, p in lora.items() if p.grad is None or not bool(p.grad.ne(0).any()))
    assert len(lora) == 2 * 2 * 2  # q_proj and v_proj, A and B, in both layers
    assert without_gradient == []
