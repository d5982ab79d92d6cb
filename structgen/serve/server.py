"""Running the app with uvicorn: ``serve`` (the ``structgen serve`` command) and
``BackgroundServer`` (a free loopback port in a thread, for tests, notebooks and benchmarks)."""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time

import uvicorn

from structgen.backends.transformers import as_model
from structgen.serve.app import create_app
from structgen.serve.scheduler import check_limits


def serve(model=None, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_queue: int = 64, api_key: str | None = None, **options) -> None:
    """Serve ``model`` (a ``Model``, a name or path, None: the embedded SmolLM2) until Ctrl-C."""
    check_limits(max_batch, max_queue)
    model = as_model(model)
    app = create_app(model, max_batch=max_batch, max_queue=max_queue, api_key=api_key, **options)
    where = f"http://{host}:{port}/v1"
    if _is_loopback(host):
        reach = "loopback only: other machines cannot connect (--host 0.0.0.0 to listen on all interfaces)"
    else:
        reach = "reachable from other machines"
        if not api_key:
            reach += ", with no --api-key: anyone who can reach it can use it"
    print(f"structgen serve: {model.name} on {where} ({reach}); up to {max_batch} requests decode "
          f"together, {max_queue} more wait", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BackgroundServer:
    """``with BackgroundServer(app) as server:`` uvicorn serves ``app`` on a free loopback port
    (``server.url`` is the ``base_url`` for the openai client) until the block ends."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="structgen-uvicorn", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.socket.close()
