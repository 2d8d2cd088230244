"""Start ``python app.py`` (the README's command) on a free local port, for API and browser tests.

One server per test process is shared by every module that asks for it (``shared_server``); it
serves tiny models from a temporary TARFLOW_MODELS_DIR, offline, and stops when the process ends.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app_models import make_tiny_datasets, make_tiny_models

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_app(env: dict[str, str] | None = None, timeout: float = 120.0, argv: list[str] | None = None) -> AppServer:
    """``python app.py`` (or ``argv``) from the repository root with GRADIO_SERVER_PORT set;
    returns once the page answers (or raises with the server's log)."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="tarflow-app-log-")) / "server.log"
    full_env = {**os.environ, **OFFLINE_ENV, "GRADIO_SERVER_PORT": str(port), **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(argv or [sys.executable, "app.py"], cwd=ROOT, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)
    server = AppServer(f"http://127.0.0.1:{port}/", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url, timeout=5) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"app.py did not answer within {timeout:.0f} s:\n{server.log_tail()}")


_shared: AppServer | None = None


def shared_server() -> AppServer:
    """The test process's server with tiny models (started on first use), fabricated datasets for
    the out-of-distribution view (12 images per set) and a cache folder of its own."""
    global _shared
    if _shared is None or not _shared.alive():
        models_dir = Path(tempfile.mkdtemp(prefix="tarflow-app-models-"))
        make_tiny_models(models_dir)
        make_tiny_datasets(models_dir / "data")
        _shared = start_app({"TARFLOW_MODELS_DIR": str(models_dir), "TARFLOW_FRAME_INTERVAL": "0",
                             "TARFLOW_DATA_DIR": str(models_dir / "data"), "TARFLOW_CACHE": str(models_dir / "cache"),
                             "TARFLOW_OOD_PER_SET": "12"})
        server = _shared
        atexit.register(lambda: (server.stop(), shutil.rmtree(models_dir, ignore_errors=True)))
    return _shared
