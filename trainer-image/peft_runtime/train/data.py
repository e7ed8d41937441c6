"""Rows in, training examples and a preflight report out.

Formats (one JSON object per row, JSON Lines or Parquet):
- chat: {"messages": [{"role": ..., "content": ...}, ...]} rendered with the tokenizer's chat template;
  the loss is on the assistant turns only (each turn's text and its end-of-turn marker).
- instruction: {"prompt": ..., "completion": ...}: prompt then completion then EOS, loss on completion + EOS.
- text: {"text": ...}: text then EOS, loss on every token.
- preference: {"prompt": ..., "chosen": ..., "rejected": ...}, all strings (tokenized as instruction rows) or
  all lists of chat messages (prompt + answer rendered with the chat template; scored on the answer's
  assistant turns only). One example holds the chosen sequence and, in `rejected`, the rejected one.

Each example keeps `input_ids` and `targets`, where targets[t] is the token position t must predict (the
next one) or IGNORE. Shifting once here means packed or padded rows never predict across a boundary.
The preflight counts what a user should know before paying for a run, with row numbers.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_operator.api.finetunejob import DatasetFormat, DatasetReport

from .errors import configuration_error, dataset_invalid

IGNORE = -100
FEW_EXAMPLES = 500  # below this, warn: a model this size memorises the set
MAX_LISTED = 8  # row numbers named per warning
MAX_WARNINGS = 64  # DatasetReport.warnings holds at most this many


@dataclass
class Example:
    input_ids: list[int]
    targets: list[int]
    rejected: Example | None = None  # preference rows: the rejected answer (this one holds the chosen)

    def __len__(self) -> int:
        """Tokens this row puts through the model (both sequences of a preference row)."""
        return len(self.input_ids) + (len(self.rejected) if self.rejected is not None else 0)


@dataclass
class PreparedDataset:
    examples: list[Example]
    report: DatasetReport
    format_problem: str | None = None  # rows in a format other than dataset.format: the run must not start


@dataclass
class _Row:
    where: str  # "train.jsonl line 7"
    value: Any = None
    problem: str | None = None  # malformed: why
    empty: bool = False


@dataclass
class _Findings:
    malformed: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    nothing_to_learn: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- reading


# Files people try that are not JSON Lines or Parquet; anything else (a ConfigMap key has no suffix) is
# read as JSON Lines.
OTHER_FORMATS = {
    ".csv": "CSV",
    ".tsv": "TSV",
    ".xlsx": "Excel",
    ".xls": "Excel",
    ".txt": "plain text",
    ".arrow": "Arrow",
    ".gz": "compressed",
    ".zip": "compressed",
}
SUPPORTED = "JSON Lines (.jsonl, one JSON object per line) or Parquet (.parquet)"


def read_rows(files: list[Path]) -> Iterator[_Row]:
    """Every row of every file, numbered from 1 (JSON Lines: line numbers, Parquet: row numbers)."""
    for path in files:
        with path.open("rb") as handle:
            head = handle.read(4096)
        if path.suffix == ".parquet" or head.startswith(b"PAR1"):
            yield from _parquet_rows(path)
            continue
        kind = OTHER_FORMATS.get(path.suffix.lower())
        if kind is None and head.lstrip().startswith(b"["):
            kind = "a JSON array"
        if kind is not None:
            raise dataset_invalid(f"{path.name}: {kind} is not supported; use {SUPPORTED}")
        yield from _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path.name} line {number}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                yield _Row(where, problem="not UTF-8 text")
                continue
            if not line:
                yield _Row(where, empty=True)
                continue
            try:
                yield _Row(where, value=json.loads(line))
            except json.JSONDecodeError as error:
                yield _Row(where, problem=f"invalid JSON ({error.msg} at column {error.colno})")


def _parquet_rows(path: Path) -> Iterator[_Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:
        raise dataset_invalid(f"{path.name} is not a readable Parquet file: {error}") from error
    number = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for value in batch.to_pylist():
            number += 1
            yield _Row(f"{path.name} row {number}", value=value)


# --------------------------------------------------------------------------------------------- checking


def _check(value: Any, data_format: DatasetFormat) -> tuple[str | None, bool]:
    """(problem, empty) for one parsed row."""
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}", False
    if data_format is DatasetFormat.CHAT:
        messages = value.get("messages")
        if messages is None:
            return "'messages' is missing", False
        if (problem := _check_messages(messages, "messages")) is not None:
            return problem, False
        has_answer = any(m["role"] == "assistant" and m["content"].strip() for m in messages)
        return None, not has_answer
    if data_format is DatasetFormat.PREFERENCE:
        return _check_preference(value)
    if data_format is DatasetFormat.INSTRUCTION:
        for key in ("prompt", "completion"):
            if key not in value:
                return f"'{key}' is missing", False
            if not isinstance(value[key], str):
                return f"'{key}' must be a string", False
        return None, not value["completion"].strip()
    if "text" not in value:
        return "'text' is missing", False
    if not isinstance(value["text"], str):
        return "'text' must be a string", False
    return None, not value["text"].strip()


def _check_messages(messages: Any, field_name: str) -> str | None:
    if not isinstance(messages, list):
        return f"'{field_name}' must be a list of {{role, content}} objects"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"{field_name}[{index}] needs a string 'role'"
        if not isinstance(message.get("content"), str):
            return f"{field_name}[{index}].content must be a string"
    return None


def _check_preference(value: dict[str, Any]) -> tuple[str | None, bool]:
    """Strings throughout, or chat messages throughout; a pair must differ to teach a preference."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in value:
            return f"'{key}' is missing", False
    if all(isinstance(value[k], str) for k in ("prompt", "chosen", "rejected")):
        answers = {k: value[k].strip() for k in PAIR}
    elif all(isinstance(value[k], list) for k in ("prompt", "chosen", "rejected")):
        for key in ("prompt", "chosen", "rejected"):
            if (problem := _check_messages(value[key], key)) is not None:
                return problem, False
        answers = {k: "".join(m["content"] for m in value[k] if m["role"] == "assistant").strip() for k in PAIR}
    else:
        return "prompt, chosen and rejected must all be strings, or all be lists of {role, content} messages", False
    if answers["chosen"] and answers["chosen"] == answers["rejected"]:
        return "chosen and rejected are the same answer: nothing to prefer", False
    return None, not (answers["chosen"] and answers["rejected"])


# The keys that say which format a row is in.
_FORMAT_KEYS = {
    DatasetFormat.CHAT: ("messages",),
    DatasetFormat.INSTRUCTION: ("prompt", "completion"),
    DatasetFormat.TEXT: ("text",),
    DatasetFormat.PREFERENCE: ("prompt", "chosen", "rejected"),
}


def _looks_like(value: Any) -> DatasetFormat | None:
    if not isinstance(value, dict):
        return None
    kinds = [kind for kind, keys in _FORMAT_KEYS.items() if all(k in value for k in keys)]
    return kinds[0] if len(kinds) == 1 else None


def _format_problem(rows_by_format: dict[DatasetFormat, list[str]], declared: DatasetFormat) -> str | None:
    """A dataset mixing formats would train on one kind's rows and skip the rest: say where each kind is.
    A dataset entirely in another format than declared: say which one to declare."""
    if len(rows_by_format) > 1:
        where = "; ".join(
            f"{kind.value} ({count_of(len(rows), 'row')}): {_listed(rows)}" for kind, rows in rows_by_format.items()
        )
        return (
            f"the dataset mixes formats, and a job trains on one (dataset.format: {declared.value}): {where}. "
            "Convert the rows to one format, or split them into separate datasets"
        )
    if rows_by_format and declared not in rows_by_format:
        (actual,) = rows_by_format
        return (
            f"dataset.format is {declared.value}, but the rows are in format {actual.value} "
            f"({', '.join(_FORMAT_KEYS[actual])}); set dataset.format: {actual.value}"
        )
    return None


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ------------------------------------------------------------------------------------------- tokenizing


def _assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]], full: str, first: int = 0
) -> list[tuple[int, int]]:
    """Character spans of the assistant turns from message `first` on in the rendered conversation.

    A turn's span runs from the end of the conversation rendered up to it (with the generation prompt)
    to the end of the conversation rendered through it, which includes the end-of-turn marker. Templates
    that re-render earlier turns differently fall back to finding the turn's content."""
    spans: list[tuple[int, int]] = []
    searched_to = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index < first:
            continue
        try:
            before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
            through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        except Exception:
            before = through = None
        if before is not None and through is not None and full.startswith(through) and through.startswith(before):
            spans.append((len(before), len(through)))
            searched_to = len(through)
            continue
        start = full.find(message["content"], searched_to)
        if start >= 0:
            spans.append((start, start + len(message["content"])))
            searched_to = start + len(message["content"])
    return spans


def _tokenize_chat(tokenizer: Any, rows: list[Any]) -> list[tuple[list[int], list[int]]]:
    return _tokenize_conversations(tokenizer, [(value["messages"], 0) for value in rows])


def _tokenize_conversations(
    tokenizer: Any, conversations: list[tuple[list[dict[str, str]], int]]
) -> list[tuple[list[int], list[int]]]:
    """Each (messages, first) rendered with the chat template, labelled on its assistant turns from `first` on."""
    texts, spans = [], []
    for messages, first in conversations:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        texts.append(full)
        spans.append(_assistant_spans(tokenizer, messages, full, first))
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    result = []
    for ids, offsets, row_spans in zip(encoded["input_ids"], encoded["offset_mapping"], spans, strict=True):
        labels = [
            token if any(start <= begin < end for start, end in row_spans) else IGNORE
            for token, (begin, _) in zip(ids, offsets, strict=True)
        ]
        result.append((list(ids), labels))
    return result


def _tokenize_instruction(tokenizer: Any, rows: list[Any]) -> list[tuple[list[int], list[int]]]:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    completions = tokenizer([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
    result = []
    for prompt, completion in zip(prompts, completions, strict=True):
        answer = list(completion) + eos
        result.append((list(prompt) + answer, [IGNORE] * len(prompt) + answer))
    return result


def _tokenize_text(tokenizer: Any, rows: list[Any]) -> list[tuple[list[int], list[int]]]:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = tokenizer([r["text"] for r in rows], add_special_tokens=True)["input_ids"]
    return [(list(ids) + eos, list(ids) + eos) for ids in encoded]


def _tokenize_preference(tokenizer: Any, value: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """[chosen, rejected]: the prompt then each answer, labelled on the answer only."""
    prompt = value["prompt"]
    if isinstance(prompt, str):
        return _tokenize_instruction(tokenizer, [{"prompt": prompt, "completion": value[k]} for k in PAIR])
    return _tokenize_conversations(tokenizer, [(prompt + value[k], len(prompt)) for k in PAIR])


PAIR = ("chosen", "rejected")
_TOKENIZE = {
    DatasetFormat.CHAT: _tokenize_chat,
    DatasetFormat.INSTRUCTION: _tokenize_instruction,
    DatasetFormat.TEXT: _tokenize_text,
}


def check_tokenizer(tokenizer: Any, data_format: DatasetFormat) -> None:
    """Fail fast when the tokenizer cannot do what the format needs."""
    if data_format is DatasetFormat.CHAT and not getattr(tokenizer, "chat_template", None):
        raise configuration_error(
            "dataset format chat needs a tokenizer with a chat template, and the base model's has none; "
            "use format instruction or text, or a model with a chat template"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise configuration_error("the base model's tokenizer is not a fast (Rust) tokenizer; one is required")


def _example(ids: list[int], labels: list[int], max_seq_length: int) -> tuple[Example, bool]:
    truncated = len(ids) > max_seq_length
    ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    targets = [*labels[1:], IGNORE]  # position t predicts token t+1; the last one has nothing after it
    return Example(ids, targets), truncated


# -------------------------------------------------------------------------------------------- preflight


def prepare_dataset(
    files: list[Path], data_format: DatasetFormat, tokenizer: Any, max_seq_length: int
) -> PreparedDataset:
    """Read, check and tokenize every row; usable examples plus the report. Never raises for bad rows."""
    findings = _Findings()
    rows_read = 0
    seen: dict[str, str] = {}
    valid: list[_Row] = []
    rows_by_format: dict[DatasetFormat, list[str]] = {}
    for row in read_rows(files):
        rows_read += 1
        if (kind := _looks_like(row.value)) is not None:
            rows_by_format.setdefault(kind, []).append(row.where)
        if row.problem is None and not row.empty:
            row.problem, row.empty = _check(row.value, data_format)
        if row.problem is not None:
            findings.malformed.append(f"{row.where}: {row.problem}")
        elif row.empty:
            findings.empty.append(row.where)
        else:
            key = _fingerprint(row.value)
            if key in seen:
                findings.duplicates.append(f"{row.where} repeats {seen[key]}")
            else:
                seen[key] = row.where
            valid.append(row)

    examples: list[Example] = []
    tokenized = _tokenize_rendered(tokenizer, valid, data_format, findings) if valid else []
    for row, sequences in tokenized:
        built = [_example(ids, labels, max_seq_length) for ids, labels in sequences]
        if any(truncated for _, truncated in built):
            findings.truncated.append(f"{row.where} ({max(len(ids) for ids, _ in sequences)} tokens)")
        if any(all(t == IGNORE for t in example.targets) for example, _ in built):
            findings.nothing_to_learn.append(row.where)
            continue
        example = built[0][0]
        if len(built) == 2:  # a preference row: chosen, rejected
            example.rejected = built[1][0]
        examples.append(example)

    report = DatasetReport(
        rows=rows_read,
        usable_rows=len(examples),
        tokens=sum(len(e) for e in examples),
        truncated_fraction=round(len(findings.truncated) / len(tokenized), 4) if tokenized else 0.0,
        duplicates=len(findings.duplicates),
        warnings=_warnings(findings, len(examples), max_seq_length),
    )
    return PreparedDataset(examples, report, _format_problem(rows_by_format, data_format))


def _tokenize_rendered(
    tokenizer: Any, rows: list[_Row], data_format: DatasetFormat, findings: _Findings
) -> list[tuple[_Row, list[tuple[list[int], list[int]]]]]:
    """Each usable row with its token sequences (ids, labels): one, or chosen and rejected for preference rows."""
    if data_format is DatasetFormat.PREFERENCE:
        pairs = []
        for row in rows:  # one at a time: a chat-form row's template may refuse it
            try:
                pairs.append((row, _tokenize_preference(tokenizer, row.value)))
            except Exception as error:
                findings.malformed.append(f"{row.where}: the chat template refused it ({error})")
        return pairs
    if data_format is DatasetFormat.CHAT:
        # A template may refuse a conversation (e.g. roles that do not alternate): that row is malformed.
        renderable = []
        for row in rows:
            try:
                tokenizer.apply_chat_template(row.value["messages"], tokenize=False)
                renderable.append(row)
            except Exception as error:
                findings.malformed.append(f"{row.where}: the chat template refused it ({error})")
        rows = renderable
    sequences = _TOKENIZE[data_format](tokenizer, [r.value for r in rows]) if rows else []
    return [(row, [sequence]) for row, sequence in zip(rows, sequences, strict=True)]


def count_of(number: int, noun: str) -> str:
    """`1 row`, `2 rows`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _listed(items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _warnings(findings: _Findings, usable: int, max_seq_length: int) -> list[str]:
    warnings = []
    if findings.malformed:
        warnings.append(f"{count_of(len(findings.malformed), 'malformed row')} skipped: {_listed(findings.malformed)}")
    if findings.empty:
        warnings.append(f"{count_of(len(findings.empty), 'empty row')} skipped: {_listed(findings.empty)}")
    if findings.duplicates:
        warnings.append(
            f"{count_of(len(findings.duplicates), 'exact duplicate row')} (kept, so they weigh more): "
            f"{_listed(findings.duplicates)}"
        )
    if findings.truncated:
        warnings.append(
            f"{count_of(len(findings.truncated), 'row')} longer than maxSeqLength {max_seq_length}, truncated: "
            f"{_listed(findings.truncated)}"
        )
    if findings.nothing_to_learn:
        warnings.append(
            f"{count_of(len(findings.nothing_to_learn), 'row')} with no answer tokens left within maxSeqLength "
            f"{max_seq_length}, skipped; raise maxSeqLength or shorten the prompts: "
            f"{_listed(findings.nothing_to_learn)}"
        )
    if 0 < usable < FEW_EXAMPLES:
        warnings.append(
            f"only {count_of(usable, 'usable example')}: under {FEW_EXAMPLES} a model overfits easily; "
            "watch evalLoss, train fewer epochs, or add data"
        )
    return warnings[:MAX_WARNINGS]


def why_unusable(report: DatasetReport) -> str:
    """The DatasetInvalid message for a dataset with no usable rows."""
    if report.rows == 0:
        return "the dataset has no rows; check the URI and that the files are not empty"
    detail = " ".join(report.warnings) or "no row could be used"
    if report.rows == 1:
        return f"the only row cannot be trained on: {detail}"
    return f"none of the {report.rows} rows can be trained on: {detail}"


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, eval): a seeded random `fraction` held out; none when there are too few rows to spare."""
    count = round(len(examples) * fraction)
    if fraction > 0 and count == 0 and len(examples) >= 10:
        count = 1
    if count == 0 or count >= len(examples):
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:count])
    return (
        [e for i, e in enumerate(examples) if i not in held_out],
        [e for i, e in enumerate(examples) if i in held_out],
    )
