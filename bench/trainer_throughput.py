"""Trainer throughput: real (non-pad) tokens per second of our trainer against transformers.Trainer + peft.

    .venv/bin/python bench/trainer_throughput.py                # SmolLM2-135M (minutes on 2 CPU cores)
    .venv/bin/python bench/trainer_throughput.py --model tiny   # the tiny test Llama (seconds)

Same model, same LoRA config (r 16 on q,k,v,o), same tokenized rows (variable-length chat: 1-3 turns,
3 to 160 words per answer), same batch size, one epoch each (so every variant trains on exactly the same
rows and tokens and only the time differs), fp32 on CPU.
Baselines, each in its own process:
- `hf-longest`: transformers.Trainer with DataCollatorForSeq2Seq padding every batch to its longest row
  (a competent dynamic-padding setup: random batches, loss over the same answer tokens);
- `hf-max`: the same, padding every batch to maxSeqLength.
Ours: `peft-runtime train` (length-grouped batches, logits only where there is a target).
Tokens/s counts only real tokens and only the training steps (model loading excluded on both sides);
each process first runs one throwaway forward/backward, so one-time start-up costs land on neither.
On a shared machine, `--rounds 2` runs every variant twice, interleaved, and keeps each one's best.
Goal: ours >= 1.3x hf-longest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.child_result import report, run_child  # noqa: E402  (after the path set-up)

_WORDS = [
    "the",
    "model",
    "answers",
    "every",
    "question",
    "about",
    "orders",
    "refunds",
    "shipping",
    "accounts",
    "passwords",
    "invoices",
    "and",
    "delivery",
    "with",
    "short",
    "clear",
    "sentences",
    "while",
    "the",
    "customer",
    "explains",
    "the",
    "problem",
    "in",
    "detail",
    "and",
    "asks",
    "again",
]


def chat_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def sentence(low: int, high: int) -> str:
        # log-uniform lengths: many short turns, some long ones, as in real chat data
        words = round(2 ** rng.uniform(low, high))
        return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."

    rows = []
    for _ in range(count):
        messages = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            messages.append({"role": "user", "content": sentence(1.5, 5.5)})  # 3 to 45 words
            messages.append({"role": "assistant", "content": sentence(1.5, 7.3)})  # 3 to 160 words
        rows.append({"messages": messages})
    return rows


def model_dir(kind: str, scratch: Path) -> Path:
    if kind == "tiny":
        from tests.support.tiny_model import build_tiny_llama

        return build_tiny_llama(scratch / "tiny")
    from peft_runtime.models import ensure_smollm2

    return ensure_smollm2()


LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def run_ours(args: argparse.Namespace, model: Path, data: Path, scratch: Path) -> dict:
    from peft_operator.api.plan import TrainingPlan
    from peft_runtime.train.run import run_plan

    events = scratch / "ours-events.jsonl"
    plan = TrainingPlan.model_validate(
        {
            "job": {"name": "bench"},
            "spec": {
                "baseModel": {"uri": model.as_uri()},
                "dataset": {"uri": data.as_uri(), "format": "chat", "validationSplit": 0.0},
                "method": {"type": "lora", "lora": LORA},
                "training": {
                    "epochs": 1,
                    "learningRate": "1e-4",
                    "batchSize": args.batch_size,
                    "maxSeqLength": args.max_seq_length,
                    "checkpointEvery": 1_000_000,
                    "seed": 0,
                },
                "output": {"uri": (scratch / "ours-out").as_uri()},
            },
            "progress": {"file": str(events)},
            "workDir": str(scratch / "ours-work"),
        }
    )
    assert run_plan(plan, stdout=False) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    progress = [e["progress"] for e in lines if e["event"] == "progress"]
    preflight = next(e["dataset"] for e in lines if e["event"] == "preflight")
    return {
        "tokens_per_second": progress[-1]["tokensPerSecond"],
        "padding": None,
        "truncated": preflight["truncatedFraction"],
    }


def run_hf(args: argparse.Namespace, model: Path, data: Path, scratch: Path, padding: str) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from peft_operator.api.finetunejob import DatasetFormat
    from peft_runtime.train.data import IGNORE, prepare_dataset

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model)
    examples = prepare_dataset([data], DatasetFormat.CHAT, tokenizer, args.max_seq_length).examples
    # The same rows and answer tokens: HF shifts labels itself, our targets are already shifted.
    rows = [
        {"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": [IGNORE, *e.targets[:-1]]}
        for e in examples
    ]
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["targetModules"],
    )
    peft_model = get_peft_model(base, lora)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    collator = DataCollatorForSeq2Seq(
        tokenizer,
        padding="longest" if padding == "longest" else "max_length",
        max_length=None if padding == "longest" else args.max_seq_length,
        label_pad_token_id=IGNORE,
    )
    counted = {"real": 0, "padded": 0}

    def counting_collator(features: list[dict]) -> dict:
        batch = collator(features)
        counted["real"] += int(batch["attention_mask"].sum())
        counted["padded"] += batch["attention_mask"].numel()
        return batch

    training_args = TrainingArguments(
        output_dir=str(scratch / f"hf-{padding}"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        logging_steps=1_000_000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=peft_model, args=training_args, train_dataset=rows, data_collator=counting_collator)
    started = time.monotonic()
    result = trainer.train()
    runtime = result.metrics.get("train_runtime") or (time.monotonic() - started)
    return {
        "tokens_per_second": round(counted["real"] / runtime, 1),
        "padding": round(1 - counted["real"] / counted["padded"], 3),
        "truncated": None,
    }


def warm_up(model: Path, batch_size: int) -> None:
    """One LoRA forward/backward on a throwaway copy: the first one in a process pays one-time costs
    (kernel set-up, allocator growth) that measured ~2 minutes here, more than a short run's training."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=LORA["r"], target_modules=LORA["targetModules"])
    throwaway = get_peft_model(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), lora)
    ids = torch.randint(0, throwaway.config.vocab_size, (batch_size, 256), generator=torch.Generator().manual_seed(0))
    throwaway(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    del throwaway


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = Path(args.scratch)
    model, data = Path(args.model_dir), Path(args.data)
    warm_up(model, args.batch_size)
    if args.variant == "ours":
        result = run_ours(args, model, data, scratch)
    else:
        result = run_hf(args, model, data, scratch, padding=args.variant.removeprefix("hf-"))
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--rows", type=int, default=None, help="rows in the epoch (default 48, tiny 480)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1, help="runs per variant, interleaved; the best counts")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rows = args.rows or (480 if args.model == "tiny" else 48)
    if args.variant:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        scratch = Path(tmp)
        model = model_dir(args.model, scratch)
        data = scratch / "chat.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(args.rows)))
        results: dict[str, dict] = {}
        order = ("hf-longest", "ours", "hf-max")
        for round_index in range(args.rounds):
            for variant in order if round_index % 2 == 0 else order[::-1]:
                result = run_variant(args, variant, scratch, model, data)
                print(f"{variant:>10}: {result['tokens_per_second']:>9.1f} real tokens/s", flush=True)
                if variant not in results or result["tokens_per_second"] > results[variant]["tokens_per_second"]:
                    results[variant] = result

    ours = results["ours"]["tokens_per_second"]
    steps = -(-args.rows // args.batch_size)
    print(
        f"\nmodel {args.model}, 1 epoch of {args.rows} rows = {steps} steps x batch {args.batch_size}, best of {args.rounds}"
    )
    print(
        f"padding share: hf-longest {results['hf-longest']['padding']:.1%}, hf-max {results['hf-max']['padding']:.1%}"
    )
    print(f"ours / hf-longest: {ours / results['hf-longest']['tokens_per_second']:.2f}x   (goal >= 1.3x)")
    print(f"ours / hf-max:     {ours / results['hf-max']['tokens_per_second']:.2f}x")


def run_variant(args: argparse.Namespace, variant: str, scratch: Path, model: Path, data: Path) -> dict:
    options = {
        "model": args.model,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "variant": variant,
        "scratch": scratch,
        "model_dir": model,
        "data": data,
    }
    result, failure = run_child(__file__, options)
    if result is None:
        sys.exit(f"{variant} failed ({failure}")
    return result


if __name__ == "__main__":
    main()
