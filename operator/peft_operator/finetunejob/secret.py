"""The Secret holding a job's progress token: the trainer gets it as env, the operator re-derives it."""

from __future__ import annotations

import base64
from typing import Any

from ..api import FineTuneJob
from ..naming import finetunejob_labels, progress_secret_name
from ..pods import owned_metadata
from ..settings import OperatorSettings
from .progress_token import progress_token


def render_progress_secret(job: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    meta = job.metadata
    assert meta.name is not None and meta.namespace is not None and meta.uid is not None
    token = progress_token(settings.progress_key, meta.namespace, meta.name, meta.uid)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": owned_metadata(
            FineTuneJob.KIND, meta, progress_secret_name(meta.name), finetunejob_labels(meta.name)
        ),
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }
