"""Running the server in a background thread of the current process.

For tests, benchmarks and notebooks: the app is served by uvicorn on a socket bound before the
thread starts (port 0 picks a free port, with no race between choosing and binding it).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class BackgroundServer:
    """Context manager serving an ASGI app on ``host``:``port`` from a daemon thread.

    Example::

        with BackgroundServer(create_app(model, settings)) as server:
            httpx.post(server.url + "/v1/embeddings", json={"input": "hello"})
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0
    ) -> None:
        import uvicorn

        self.app = app
        self.start_timeout_s = start_timeout_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        bound_port = self._socket.getsockname()[1]
        self.url = (
            f"http://[{host}]:{bound_port}" if family == socket.AF_INET6 else f"http://{host}:{bound_port}"
        )
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="unime-serve", daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._socket.close()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()
