"""Quality of each PEFT method against full fine-tuning, same task, data, budget and seed, in one run.

    .venv/bin/python bench/quality.py                # SmolLM2-135M-Instruct (about 15 minutes on 2 cores)
    .venv/bin/python bench/quality.py --model tiny   # the tests' tiny Llama: a smoke run of the whole path

The task teaches a style the base model never uses, with the topic copied from the question:
"Tell me about the quiet river." -> "Arr! The quiet river be a fine treasure, matey. Yo-ho-ho!".
Every PEFT method trains through the product's trainer (the plan a FineTuneJob renders); full fine-tuning
(every weight, the baseline, only here) uses the same data pipeline, loss, split, batch and step budget.
Each model is then served by the built-in server (`peft-runtime serve`, all seven adapters on one base,
the full model on its own) and asked the held-out prompts over HTTP, greedy.

Printed per method: trainable parameters (% of the model), held-out eval loss (the trainer's validation
split) and its ratio to full fine-tuning's (full / method: 1.0 = as good), and the held-out score (exact
answers on unseen topics) and its ratio to full fine-tuning's. The claim measured: PEFT reaches "90-99%
of full fine-tuning quality" with a fraction of the trainable parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ADJECTIVES = [
    "red",
    "blue",
    "quiet",
    "loud",
    "old",
    "young",
    "bright",
    "dark",
    "tiny",
    "giant",
    "lazy",
    "brave",
    "gentle",
    "wild",
    "silver",
    "golden",
]
NOUNS = [
    "river",
    "apple",
    "castle",
    "forest",
    "dragon",
    "violin",
    "garden",
    "rocket",
    "teapot",
    "lantern",
    "mountain",
    "kitten",
    "harbor",
]
ANSWER = "Arr! The {topic} be a fine treasure, matey. Yo-ho-ho!"
TRAIN_ROWS, HELD_OUT = 160, 40

# Per method: the API's method block and a learning rate suited to the step budget (common defaults).
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "lora": ({"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}}, "2e-3"),
    "dora": ({"type": "dora", "dora": {"r": 16, "alpha": 32, "dropout": 0.0}}, "2e-3"),
    "qlora": ({"type": "qlora", "qlora": {"r": 16, "alpha": 32, "dropout": 0.0, "quantization": {"bits": 4}}}, "2e-3"),
    "ia3": ({"type": "ia3"}, "2e-2"),
    "prefix": ({"type": "prefix", "prefix": {"numVirtualTokens": 16}}, "2e-2"),
    "prompt": ({"type": "prompt", "prompt": {"numVirtualTokens": 16}}, "3e-2"),
    "adapter": ({"type": "adapter", "adapter": {"reductionFactor": 16}}, "2e-3"),
}
FULL_LR = 3e-5


def task_rows() -> tuple[list[dict[str, Any]], list[str]]:
    """(training chat rows, held-out topics): every topic appears on one side only."""
    topics = [f"{a} {n}" for a in ADJECTIVES for n in NOUNS]
    random.Random(0).shuffle(topics)
    held_out, train = topics[:HELD_OUT], topics[HELD_OUT : HELD_OUT + TRAIN_ROWS]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Tell me about the {topic}."},
                {"role": "assistant", "content": ANSWER.format(topic=topic)},
            ]
        }
        for topic in train
    ]
    return rows, held_out


def training_block(args: argparse.Namespace, learning_rate: str) -> dict[str, Any]:
    return {
        "maxSteps": args.steps,
        "batchSize": args.batch_size,
        "learningRate": learning_rate,
        "maxSeqLength": 64,
        "warmupSteps": 3,
        "checkpointEvery": args.steps,
        "seed": 0,
    }


def train_method(name: str, base: Path, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train through the product's trainer; the completed event (metrics include evalLoss)."""
    from peft_operator.api.plan import TrainingPlan
    from peft_runtime.train.run import run_plan

    method, learning_rate = METHODS[name]
    plan = TrainingPlan.model_validate(
        {
            "job": {"name": f"quality-{name}"},
            "spec": {
                "baseModel": {"uri": base.as_uri()},
                "dataset": {"uri": data.as_uri(), "format": "chat", "validationSplit": 0.1},
                "method": method,
                "training": training_block(args, learning_rate),
                "output": {"uri": (out / name).as_uri()},
            },
            "progress": {"file": str(out / f"{name}.events.jsonl")},
            "workDir": str(out / f"{name}.work"),
        }
    )
    started = time.monotonic()
    code = run_plan(plan, stdout=False)
    events = [json.loads(x) for x in (out / f"{name}.events.jsonl").read_text().splitlines()]
    if code != 0:
        raise SystemExit(f"{name} failed: {events[-1]}")
    completed = next(e for e in events if e["event"] == "completed")
    manifest = json.loads((out / name / "manifest.json").read_text())
    return {
        "evalLoss": completed["progress"]["evalLoss"],
        "trainable": int(manifest["metrics"]["trainableParameters"]),
        "seconds": time.monotonic() - started,
    }


def full_finetune(base: Path, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every weight trained: the trainer's data pipeline, split, batches and loss definition, plain AdamW."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_operator.api.finetunejob import DatasetFormat
    from peft_runtime.train.batches import EpochPlanner, collate, eval_batches
    from peft_runtime.train.data import prepare_dataset, split_examples

    torch.manual_seed(0)
    random.seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = prepare_dataset([data], DatasetFormat.CHAT, tokenizer, 64).examples
    train, held = split_examples(examples, 0.1, 0)
    planner = EpochPlanner([len(e) for e in train], args.batch_size, 0, False, 64)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=FULL_LR, weight_decay=0.0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def summed_loss(batch: Any) -> Any:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=-100, reduction="sum"
        )

    started = time.monotonic()
    model.train()
    epoch, order = 0, []
    for step in range(args.steps):
        if not order:  # the next epoch, in the trainer's seeded order
            order, epoch = list(planner.epoch(epoch)), epoch + 1
        batch = collate(train, order.pop(0), pad, False)
        warmup = min(1.0, (step + 1) / 4)
        for group in optimizer.param_groups:
            group["lr"] = FULL_LR * warmup
        loss = summed_loss(batch) / max(batch.loss_tokens, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.monotonic() - started
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for group in eval_batches([len(e) for e in held], args.batch_size):
            batch = collate(held, group, pad, False)
            total += float(summed_loss(batch))
            tokens += batch.loss_tokens
    model.save_pretrained(out / "full")
    tokenizer.save_pretrained(out / "full")
    return {
        "evalLoss": round(total / max(tokens, 1), 6),
        "trainable": sum(p.numel() for p in model.parameters()),
        "seconds": seconds,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(model: Path, name: str, adapters: dict[str, Path], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "peft_runtime.cli",
        "serve",
        f"--model={model}",
        f"--served-model-name={name}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    command += [f"--adapter={name}={path}" for name, path in adapters.items()]
    if os.environ.get("PEFT_CPU_THREADS"):
        command.append(f"--threads={os.environ['PEFT_CPU_THREADS']}")
    env = {**os.environ, "PEFT_ADMIN_TOKEN": "bench"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(1)
    process.kill()
    raise SystemExit(f"the server did not start; see {log}")


def score(url: str, model: str, topics: list[str]) -> tuple[float, str]:
    """Share of held-out topics answered exactly in the taught style; one sample answer."""
    exact, sample = 0, ""
    for topic in topics:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Tell me about the {topic}."}],
            "max_tokens": 32,
            "temperature": 0,
        }
        request = urllib.request.Request(
            f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())["choices"][0]["message"]["content"].strip()
        exact += answer == ANSWER.format(topic=topic)
        sample = sample or answer
    return exact / len(topics), sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model folder")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per method (same budget for all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads everywhere (default: torch's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:  # the trainer and the servers read it; full fine-tuning runs in this process
        import torch

        os.environ["PEFT_CPU_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)

    from serving_throughput import model_dir  # bench/ is on the path when run as a script

    out = Path(tempfile.mkdtemp(prefix="peft-quality-"))
    base = model_dir(args.model, out)
    rows, held_out = task_rows()
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    methods = [m for m in args.methods.split(",") if m]

    results = {"full": full_finetune(base, data, out, args)}
    print(
        f"full fine-tuning: eval loss {results['full']['evalLoss']:.4f} in {results['full']['seconds']:.0f} s",
        flush=True,
    )
    for name in methods:
        results[name] = train_method(name, base, data, out, args)
        print(f"{name}: eval loss {results[name]['evalLoss']:.4f} in {results[name]['seconds']:.0f} s", flush=True)

    full_server, full_url = serve(out / "full", "full", {}, out / "full-server.log")
    try:
        results["full"]["score"], results["full"]["sample"] = score(full_url, "full", held_out)
    finally:
        full_server.terminate()
        full_server.wait(timeout=60)
    server, url = serve(base, "base", {name: out / name for name in methods}, out / "server.log")
    try:
        results["base"] = {"evalLoss": None, "trainable": 0}
        results["base"]["score"], results["base"]["sample"] = score(url, "base", held_out)
        for name in methods:
            results[name]["score"], results[name]["sample"] = score(url, name, held_out)
    finally:
        server.terminate()
        server.wait(timeout=60)

    total = results["full"]["trainable"]
    full = results["full"]
    print(f"\n{args.steps} steps x batch {args.batch_size}, {TRAIN_ROWS} training rows, {HELD_OUT} held-out topics")
    print(
        f"{'method':<8} {'trainable':>12} {'%':>8} {'eval loss':>10} {'loss ratio':>10} {'score':>6} {'score ratio':>11}"
    )
    for name in ["full", *methods, "base"]:
        r = results[name]
        loss = f"{r['evalLoss']:.4f}" if r["evalLoss"] is not None else "-"
        loss_ratio = f"{full['evalLoss'] / r['evalLoss']:.2f}x" if r["evalLoss"] else "-"
        score_ratio = f"{r['score'] / full['score']:.2f}x" if full["score"] else "-"
        share = 100 * r["trainable"] / total
        print(
            f"{name:<8} {r['trainable']:>12,} {share:>7.3f}% {loss:>10} {loss_ratio:>10} {r['score']:>6.2f} {score_ratio:>11}"
        )
    print("\nsample answers:")
    for name in ["full", *methods, "base"]:
        print(f"  {name}: {results[name]['sample'][:100]}")
    print("RESULT " + json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "sample"} for k, v in results.items()}))


if __name__ == "__main__":
    main()
