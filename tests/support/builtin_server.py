"""The built-in server (engine + HTTP app) on a loopback port, for tests: started, yielded, stopped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def builtin_server(model_dir: Path, token_file: Path, **config: Any) -> Iterator[Any]:
    """A BackgroundServer (`.url`) with `.engine`; `config` goes to EngineConfig. Torch's thread count is
    restored afterwards (EngineConfig.threads sets it for the whole process)."""
    import torch

    from peft_runtime.common.http_edge import BackgroundServer, TokenSource
    from peft_runtime.serving.app import create_app
    from peft_runtime.serving.engine import Engine, EngineConfig

    threads = torch.get_num_threads()
    engine = Engine(EngineConfig(model_dir=model_dir, **config)).start()
    http = BackgroundServer(lambda: create_app(engine, TokenSource(token_file))).start()
    http.engine = engine  # type: ignore[attr-defined]
    try:
        yield http
    finally:
        http.stop()
        engine.stop()
        torch.set_num_threads(threads)
