"""``python app.py`` (the README's command) started on a free local port, for the benchmarks that
measure the app as a browser meets it (app_latency.py, load.py).

The tests start their servers with this too (tests/app_server.py adds tiny models and one shared
server); benchmarks run the app on the models it normally offers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppProcess:
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


def start_app(env: dict[str, str] | None = None, timeout: float = 120.0, argv: list[str] | None = None) -> AppProcess:
    """``python app.py`` (or ``argv``) from the repository root with GRADIO_SERVER_PORT set;
    returns once the page answers (or raises with the end of the server's log)."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="tarflow-app-log-")) / "server.log"
    full_env = {**os.environ, **OFFLINE_ENV, "GRADIO_SERVER_PORT": str(port), **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(argv or [sys.executable, "app.py"], cwd=ROOT, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)
    app = AppProcess(f"http://127.0.0.1:{port}/", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not app.alive():
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{app.log_tail()}")
        try:
            with urllib.request.urlopen(app.url, timeout=5) as r:
                if r.status == 200:
                    return app
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    app.stop()
    raise RuntimeError(f"app.py did not answer within {timeout:.0f} s:\n{app.log_tail()}")
