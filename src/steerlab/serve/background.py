"""Serving an app on a loopback port from a background thread (notebooks, tests, benchmarks):

    with BackgroundServer(create_app(lm, vectors)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
"""

from __future__ import annotations

import socket
import threading
import time


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it; another process could still take
    it before it is bound again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackgroundServer:
    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.engine.close()
