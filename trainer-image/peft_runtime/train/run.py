"""One run of the trainer as a process: plan in, events out, exit code.

Exit codes: 0 succeeded; 1 failed in a way a retry may fix (storage, model download, crash);
3 failed in a way no retry fixes (DatasetInvalid, ConfigurationError): for the Job's podFailurePolicy;
128 + N stopped by signal N (SIGTERM 143, SIGINT 130) after a checkpoint: a restart resumes the run.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

from pydantic import ValidationError

from peft_operator.api.events import FailedEvent, FailureReason
from peft_operator.api.plan import TrainingPlan
from peft_operator.api.validation import problems_of

from .distributed import process_rank
from .errors import EXIT_OK, EXIT_PERMANENT, EXIT_RETRYABLE, TrainerError
from .progress import Reporter
from .stopping import Interrupted

log = logging.getLogger("peft_runtime")


def load_plan(path: Path) -> TrainingPlan | None:
    """The plan, or None after saying on stderr what is wrong with it."""
    try:
        return TrainingPlan.model_validate_json(Path(path).read_text())
    except OSError as error:
        print(f"cannot read plan {path}: {error}", file=sys.stderr)
    except ValidationError as error:
        print(f"plan {path} is invalid: " + "; ".join(problems_of(error)), file=sys.stderr)
    return None


def quiet_libraries() -> None:
    """Library chatter (load bars, deprecation notes) off stdout/stderr; our events are the output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns on import that an optional kernels package is missing: noise on every run.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def run_plan(
    plan: TrainingPlan,
    *,
    merge: bool = False,
    progress_bar: bool = False,
    stdout: bool = True,
    preflight_only: bool = False,
) -> int:
    """Train (or, with `preflight_only`, run the checks before training), report the outcome on every sink,
    and return the exit code; never raises."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    # In a distributed run rank 0 reports for all (one termination message, one progress stream).
    reporter = (
        Reporter.for_plan(plan.progress, stdout=stdout, progress_bar=progress_bar)
        if process_rank() == 0
        else Reporter([])
    )
    try:
        from .trainer import preflight, train

        outcome = preflight(plan, reporter) if preflight_only else train(plan, reporter, merge=merge)
        if outcome is not None:
            reporter.emit(outcome)
        return EXIT_OK
    except Interrupted as stopped:  # not a failure: no failed event, the Job's next pod carries on
        log.warning("Training %s", stopped.message)
        return stopped.exit_code
    except TrainerError as error:
        log.error("Training failed (%s): %s", error.reason.value, error.message)
        reporter.emit(FailedEvent(reason=error.reason, message=error.message[:2048]))
        return error.exit_code
    except Exception as error:
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}"[:2048]
        reporter.emit(FailedEvent(reason=FailureReason.TRAINING_ERROR, message=message))
        return EXIT_RETRYABLE
    finally:
        reporter.close()


__all__ = ["EXIT_OK", "EXIT_PERMANENT", "EXIT_RETRYABLE", "load_plan", "run_plan"]
