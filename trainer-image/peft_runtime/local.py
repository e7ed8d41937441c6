"""Local mode: run a FineTuneJob's training on this machine (`peft-runtime local train -f job.yaml`).

The same trainer as in the cluster, with local storage: plain paths in the YAML become file:// URIs
(relative ones relative to the YAML file's folder), and the hf:// name of a model this project ships
(SmolLM2-135M-Instruct) is read from its converted copy in the cache, since there is no hub; the adapter
still records the hf:// name, so it loads wherever that model is served.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from peft_operator.api.events import STOPPED_BY_SIGNAL_EXIT_CODES
from peft_operator.api.finetunejob import FineTuneJob
from peft_operator.api.plan import JobIdentity, Mounts, ProgressSinkConfig, TrainingPlan
from peft_operator.api.validation import SpecError, parse_object

from .models import shipped_model_dir


def _as_uri(value: Any, folder: Path) -> Any:
    if not isinstance(value, str) or "://" in value:
        return value
    return (folder / value).resolve().as_uri()


def local_job(path: Path) -> FineTuneJob:
    """The FineTuneJob in `path`, with local paths as file:// URIs."""
    path = Path(path)
    body = yaml.safe_load(path.read_text())
    folder = path.resolve().parent
    spec = body.get("spec") if isinstance(body, dict) else None
    if isinstance(spec, dict):
        for section in ("baseModel", "dataset", "output"):
            if isinstance(spec.get(section), dict) and "uri" in spec[section]:
                spec[section]["uri"] = _as_uri(spec[section]["uri"], folder)
    return parse_object(FineTuneJob, body)


def _shipped_models(base_model_uri: str) -> Mounts:
    folder = shipped_model_dir(base_model_uri)
    return Mounts(local_models={base_model_uri: str(folder)} if folder is not None else {})


def train_local(
    path: Path, work_dir: Path | None = None, *, merge: bool = False, progress_bar: bool | None = None
) -> Path:
    """Train the adapter the FineTuneJob in `path` describes; returns the adapter directory.

    Raises SystemExit with the trainer's exit code when the job is invalid or training fails."""
    from .train.run import run_plan

    try:
        job = local_job(path)
    except SpecError as error:
        print(error, file=sys.stderr)
        raise SystemExit(3) from None
    bar = sys.stderr.isatty() if progress_bar is None else progress_bar
    print(f"Training {job.metadata.name}: importing torch, transformers and peft", file=sys.stderr, flush=True)
    scratch = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="peft-local-"))
    plan = TrainingPlan(
        job=JobIdentity(name=job.metadata.name or Path(path).stem),
        spec=job.spec,
        mounts=_shipped_models(job.spec.base_model.uri),
        progress=ProgressSinkConfig(),
        work_dir=str(scratch),
    )
    # With a bar on the terminal, the JSON lines would only scroll it away.
    code = run_plan(plan, merge=merge, progress_bar=bar, stdout=not bar)
    if code in STOPPED_BY_SIGNAL_EXIT_CODES:
        print(f"Training {plan.job.name} stopped; the same command resumes it from its checkpoint", file=sys.stderr)
        raise SystemExit(code)
    if code != 0:
        print(f"Training {plan.job.name} failed (exit code {code})", file=sys.stderr)
        raise SystemExit(code)
    uri = job.spec.output.uri
    adapter = Path(uri.removeprefix("file://")) if uri.startswith("file://") else Path(scratch, "output")
    print(f"Adapter {plan.job.name} written to {adapter if uri.startswith('file://') else uri}", file=sys.stderr)
    return adapter
