"""Which OpenAI request fields the built-in engine refuses, and why: the one table the request models read.

Nothing a client sends is silently ignored. A request field is one of:
- implemented: a field of the pydantic request model (protocol.py);
- not implemented: listed here with what to do instead; a request that sets it to anything but its neutral
  value (the value that asks for nothing: absent, null, false, empty, "none", {"type": "text"}) gets a
  400 that names the field;
- no effect by OpenAI's own definition: identifiers and caching hints for OpenAI's platform that do not
  change the answer (`user`, `metadata`, ...); accepted, and documented as having no effect here;
- anything else: 400 "unrecognized request argument", as OpenAI's API itself answers.
Checked against the create parameters of the pinned `openai` client (constraints.txt).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

USE_VLLM = "use an AdapterDeployment with runtime.engine: vllm"


def _empty(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {} or value == ""


def _one_of(*neutral: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or value in neutral


@dataclass(frozen=True)
class NotImplementedField:
    advice: str  # what to do instead
    neutral: Callable[[Any], bool] = _empty  # values that ask for nothing, accepted


_TOOLS = f"tool and function calling are not implemented by the built-in engine; {USE_VLLM}"

CHAT_NOT_IMPLEMENTED: Mapping[str, NotImplementedField] = {
    "response_format": NotImplementedField(
        "JSON mode and structured outputs need constrained decoding, which the built-in engine does not have; "
        f'send {{"type": "text"}} or leave it out (and ask for JSON in the prompt), or {USE_VLLM}',
        lambda value: value is None or value == {"type": "text"},
    ),
    "tools": NotImplementedField(_TOOLS),
    "functions": NotImplementedField(_TOOLS),
    "tool_choice": NotImplementedField(_TOOLS, _one_of("none")),
    "function_call": NotImplementedField(_TOOLS, _one_of("none")),
    "audio": NotImplementedField("the built-in engine generates text only; leave it out"),
    "modalities": NotImplementedField(
        'the built-in engine generates text only; send ["text"] or leave it out', _one_of(["text"])
    ),
    "prediction": NotImplementedField("predicted outputs are not implemented by the built-in engine; leave it out"),
    "reasoning_effort": NotImplementedField("the served models are not reasoning models; leave it out"),
    "verbosity": NotImplementedField("the built-in engine has no verbosity control; leave it out"),
    "web_search_options": NotImplementedField("the built-in engine cannot search the web; leave it out"),
    "moderation": NotImplementedField(
        "the built-in engine does not moderate input or output; moderate in your application, and leave it out"
    ),
    "store": NotImplementedField("the built-in engine stores no completions; send false or leave it out"),
    "service_tier": NotImplementedField(
        'the built-in engine has one service tier; send "auto" or "default", or leave it out',
        _one_of("auto", "default"),
    ),
}

COMPLETION_NOT_IMPLEMENTED: Mapping[str, NotImplementedField] = {
    "suffix": NotImplementedField(f"insertion (a suffix) is not implemented by the built-in engine; {USE_VLLM}"),
}

# Accepted and without effect here, as for OpenAI's own answer: who is asking, and caching hints.
CHAT_NO_EFFECT = frozenset(
    {
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "metadata",
        "parallel_tool_calls",  # means something only with `tools`, which are refused
    }
)
COMPLETION_NO_EFFECT = frozenset({"user"})

# Fields of a chat message other than role and content.
MESSAGE_NOT_IMPLEMENTED: Mapping[str, NotImplementedField] = {
    "name": NotImplementedField(
        "participant names are not passed to the chat template by the built-in engine; put the name in the content"
    ),
    "tool_calls": NotImplementedField(_TOOLS),
    "tool_call_id": NotImplementedField(_TOOLS),
    "function_call": NotImplementedField(_TOOLS),
    "audio": NotImplementedField("the built-in engine takes text only; leave it out"),
    "refusal": NotImplementedField("send the assistant's text as content"),
}


def refuse_what_is_not_implemented(
    data: Any,
    implemented: Mapping[str, Any],
    not_implemented: Mapping[str, NotImplementedField],
    no_effect: frozenset[str] = frozenset(),
) -> Any:
    """The request body without the fields that are null, neutral or without effect; raises for any other
    field that is not `implemented`. For a model_validator(mode="before"): the error carries the field's name."""
    if not isinstance(data, dict):
        return data
    kept = {}
    for name, value in data.items():
        if name in implemented:
            if value is not None:  # null is "not given" in OpenAI's API: the default applies
                kept[name] = value
        elif name in no_effect:
            continue
        elif (field := not_implemented.get(name)) is not None:
            if not field.neutral(value):
                raise PydanticCustomError("not_implemented", "{advice}", {"param": name, "advice": field.advice})
        else:
            raise PydanticCustomError(
                "unrecognized_field",
                "unrecognized request argument; the fields this server reads are: {known}",
                {"param": name, "known": ", ".join(sorted(implemented))},
            )
    return kept
