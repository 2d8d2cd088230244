"""The app's HTTP protocol spoken directly, as a hostile client would: the queue (any event by
number, including the page's private helpers that gradio_client refuses to call), uploads, the
component server (the drawing canvas's blobs), and the server process's memory.

Used by ``benchmarks/abuse.py`` and by the hardening tests (tests/test_app_hardening.py).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import psutil

API = "gradio_api"


def _post(url: str, body: bytes, content_type: str, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def config(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}config", timeout=30) as r:
        return json.loads(r.read())


def fn_index(url: str, api_name: str) -> int:
    """The queue index of the event whose (possibly private) api_name is ``api_name``."""
    for i, dep in enumerate(config(url)["dependencies"]):
        if dep.get("api_name") == api_name:
            return i
    raise KeyError(api_name)


def component_id(url: str, elem_id: str) -> int:
    for comp in config(url)["components"]:
        if comp.get("props", {}).get("elem_id") == elem_id:
            return comp["id"]
    raise KeyError(elem_id)


def upload(url: str, data: bytes, filename: str = "image.png") -> tuple[int, str | None]:
    """POST a file to Gradio's upload route; (HTTP status, server path or None)."""
    body, ctype = _multipart({}, {"files": (filename, data)})
    status, out = _post(f"{url}{API}/upload", body, ctype)
    return status, (json.loads(out)[0] if status == 200 else None)


def file_data(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def queue_call(url: str, index: int, data: list, timeout: float = 120) -> tuple[bool, Any]:
    """Run event ``index`` through the queue; (success, final output list or error message)."""
    session = uuid.uuid4().hex[:11]
    body = json.dumps({"data": data, "fn_index": index, "session_hash": session, "event_data": None,
                       "trigger_id": None}).encode()
    status, out = _post(f"{url}{API}/queue/join", body, "application/json")
    if status != 200:
        return False, f"HTTP {status}: {out[:200]!r}"
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(f"{url}{API}/queue/data?session_hash={session}", timeout=timeout) as r:
        for raw in r:
            if time.monotonic() > deadline:
                return False, "timed out"
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") == "process_completed":
                output = msg.get("output") or {}
                if msg.get("success"):
                    return True, output.get("data")
                return False, output.get("error") or json.dumps(output)[:300]
    return False, "stream ended without a result"


def post_blob(url: str, component: int, kind: str, blob: bytes, blob_id: str, index: str = "null") -> int:
    """What the drawing canvas sends before its event: one piece of the drawing by id."""
    fields = {"type": kind, "index": index, "id": blob_id, "component_id": str(component),
              "fn_name": "accept_blobs", "session_hash": uuid.uuid4().hex[:11]}
    body, ctype = _multipart(fields, {"file": ("blob", blob)})
    status, _ = _post(f"{url}{API}/component_server", body, ctype)
    return status


class PeakRSS:
    """Resident memory of a process, sampled every few milliseconds while the block runs:
    ``before``, ``peak`` and ``after`` in bytes."""

    def __init__(self, pid: int, every: float = 0.005):
        self.proc = psutil.Process(pid)
        self.every = every
        self.before = self.peak = self.after = 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = self.proc.memory_info().rss
        self.peak = max(self.peak, self.after)

    @property
    def growth(self) -> int:
        return self.peak - self.before
