"""The real application under uvicorn, in a subprocess on a free port, as an operator runs it."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from sqlalchemy.engine import URL

from support import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(database: URL | str, api_key: str | None, *options: str) -> tuple[subprocess.Popen, int]:
    """Start ``uvicorn autopack.main:app`` on ``database``; ``api_key`` None leaves AUTOPACK_API_KEY unset."""
    url = database if isinstance(database, str) else database.render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT / "src")}
    env.pop("AUTOPACK_API_KEY", None)
    if api_key is not None:
        env["AUTOPACK_API_KEY"] = api_key
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "autopack.main:app", "--host", "127.0.0.1", "--port", str(port), *options],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return server, port


@contextmanager
def serving(database: URL | str, api_key: str | None, *options: str) -> Iterator[httpx.Client]:
    """The real app under uvicorn on a free port, and a client for it; fails if the server does not come up."""
    server, port = start(database, api_key, *options)
    try:
        deadline = time.monotonic() + 30
        while server.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert server.poll() is None, f"uvicorn exited with {server.returncode}:\n{server.stderr.read()}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.terminate()
        server.wait(10)
