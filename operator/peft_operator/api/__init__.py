"""The peft.dev/v1alpha1 API: the single source of truth for CRDs, operator validation and the trainer."""

from .adapterattachment import AdapterAttachment, AdapterAttachmentSpec, AdapterAttachmentStatus
from .adapterdeployment import AdapterDeployment, AdapterDeploymentSpec, AdapterDeploymentStatus
from .base import API_VERSION, GROUP, VERSION, Condition, ConditionStatus
from .finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus, Phase
from .methods import Method, MethodType
from .uris import Scheme, StorageUri, parse_uri

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "AdapterAttachment",
    "AdapterAttachmentSpec",
    "AdapterAttachmentStatus",
    "AdapterDeployment",
    "AdapterDeploymentSpec",
    "AdapterDeploymentStatus",
    "Condition",
    "ConditionStatus",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "Method",
    "MethodType",
    "Phase",
    "Scheme",
    "StorageUri",
    "parse_uri",
]
