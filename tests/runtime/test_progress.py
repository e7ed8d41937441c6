"""Progress sinks: HTTP (with the bearer token, rate-limited, never fatal), JSON lines, termination log."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.builders import chat_rows, make_plan, run_training, write_jsonl


class ProgressReceiver:
    """A real aiohttp server on 127.0.0.1 that records every POST (or answers with `status`)."""

    def __init__(self, status: int = 200):
        self.status = status
        self.received: list[tuple[str | None, dict[str, Any]]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        from aiohttp import web

        async def receive(request: web.Request) -> web.Response:
            self.received.append((request.headers.get("Authorization"), await request.json()))
            return web.json_response({}, status=self.status)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/events", receive)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}/events"
            self._ready.set()

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def __enter__(self) -> ProgressReceiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def kinds(self) -> list[str]:
        return [body["event"] for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[ProgressReceiver]:
    with ProgressReceiver() as server:
        yield server


def _plan(tiny_model_dir: Path, tmp_path: Path, **progress: Any) -> Any:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    return make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=data.as_uri(),
        output_uri=(tmp_path / "out").as_uri(),
        work_dir=tmp_path / "work",
        training={"maxSteps": 30, "checkpointEvery": 10},
        progress=progress,
    )


def test_http_sink_posts_preflight_progress_and_completed_with_the_bearer_token(
    receiver: ProgressReceiver, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTJ_TOKEN", "s3cr3t-token")
    plan = _plan(tiny_model_dir, tmp_path, url=receiver.url, tokenEnv="FTJ_TOKEN", intervalSeconds=3600)
    run = run_training(plan)
    assert run.exit_code == 0
    kinds = receiver.kinds()
    assert kinds[0] == "preflight" and kinds[-1] == "completed"
    # One progress POST per interval: the first step at once, the newest one flushed before completed.
    assert kinds[1:-1] == ["progress", "progress"]
    assert [body["progress"]["step"] for _, body in receiver.received[1:-1]] == [1, 30]
    assert {auth for auth, _ in receiver.received} == {"Bearer s3cr3t-token"}
    assert receiver.received[-1][1] == run.of("completed")[0]
    assert len(run.of("progress")) == 30  # the file sink gets every step


def test_http_sink_sends_every_progress_when_the_interval_allows(
    receiver: ProgressReceiver, tiny_model_dir: Path, tmp_path: Path
) -> None:
    plan = _plan(tiny_model_dir, tmp_path, url=receiver.url, intervalSeconds=0.001)
    assert run_training(plan).exit_code == 0
    steps = [body["progress"]["step"] for _, body in receiver.received if body["event"] == "progress"]
    assert steps == sorted(steps) and steps[-1] == 30 and len(steps) > 2


def test_a_failing_progress_endpoint_never_stops_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ProgressReceiver(status=500) as broken:
        run = run_training(_plan(tiny_model_dir, tmp_path, url=broken.url, intervalSeconds=3600))
        assert run.exit_code == 0
        assert broken.kinds().count("preflight") == 3  # retried, then dropped
    unreachable = run_training(_plan(tiny_model_dir, tmp_path / "b", url="http://127.0.0.1:9/events"))
    assert unreachable.exit_code == 0


def test_final_event_goes_compactly_to_the_termination_log(tiny_model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    run = run_training(_plan(tiny_model_dir, tmp_path, terminationLog=str(log)))
    assert run.exit_code == 0
    text = log.read_text()
    assert "\n" not in text and len(text.encode()) < 4096
    assert json.loads(text) == run.of("completed")[0]


def test_a_long_failure_message_is_shortened_to_fit_the_termination_log() -> None:
    from peft_operator.api.events import FailedEvent, FailureReason
    from peft_runtime.train.progress import compact_final

    event = FailedEvent(reason=FailureReason.TRAINING_ERROR, message="é" * 2048)
    line = compact_final(event)
    assert len(line.encode()) < 4096
    assert json.loads(line)["reason"] == "TrainingError"


def test_stdout_carries_one_json_line_per_event(tiny_model_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from peft_runtime.train.run import run_plan

    assert run_plan(_plan(tiny_model_dir, tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["preflight"] + ["progress"] * 30 + ["completed"]
    progress = events[5]["progress"]
    assert {"step", "totalSteps", "epoch", "loss", "tokensPerSecond", "eta", "percent"} <= set(progress)
    assert "lr" in events[5]
