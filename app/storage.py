"""Every file the app writes, in bounded folders.

Files the app itself writes (generated grids, drawings, images sent inline as data URLs) live in
one scratch folder, a sub-folder per file, and each new sub-folder sweeps the oldest away once
the folder holds more than ``TARFLOW_SCRATCH_MB`` megabytes or ``MAX_ITEMS`` sub-folders, or
once they are older than ``TARFLOW_FILE_MAX_AGE`` seconds. Downloaded checkpoints are swept the
same way by ``prune`` (the least recently used go first).

Files Gradio writes for its responses and uploads are removed by its ``delete_cache``, but only
those it tracks: outputs that a streaming event first skips (``gr.skip()``) are tracked by a
per-session copy of the component that the cleanup never sees (Gradio 6.31: each generation left
its strip and heatmap behind for good). On a public server a janitor thread therefore sweeps
Gradio's whole folder by age and size too, sparing what existed at start (the examples).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

MAX_ITEMS = 2000  # sub-folders in the scratch folder; drawings are small, so bytes alone would allow ~10^5
_lock = threading.Lock()


def scratch_root() -> Path:
    return Path(os.environ.get("TARFLOW_SCRATCH") or Path(tempfile.gettempdir()) / "tarflow-app")


def scratch_bytes() -> int:
    return int(float(os.environ.get("TARFLOW_SCRATCH_MB", "256")) * 2**20)


def max_age() -> float:
    return float(os.environ.get("TARFLOW_FILE_MAX_AGE", "3600"))


def size_of(path: Path) -> int:
    """Bytes under ``path`` (links are not followed: a Hub snapshot links to its blobs)."""
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())
    except OSError:
        return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prune(units: list[Path], max_bytes: int, max_count: int | None = None, older_than: float | None = None,
          keep: Path | None = None) -> list[Path]:
    """Remove whole ``units`` (files or folders), oldest first by modification time, until they
    hold at most ``max_bytes`` and ``max_count`` items; also any older than ``older_than``
    seconds. ``keep`` (the one just written) is never removed. Returns what was removed."""
    now = time.time()
    found = []
    for unit in units:
        try:
            found.append((unit.lstat().st_mtime, unit, size_of(unit)))
        except OSError:
            continue  # removed meanwhile
    found.sort(key=lambda item: item[0])
    total, count = sum(s for _, _, s in found), len(found)
    removed = []
    for mtime, unit, size in found:
        stale = older_than is not None and now - mtime > older_than
        over = total > max_bytes or (max_count is not None and count > max_count)
        if not (stale or over) or (keep is not None and unit == keep):
            continue
        _remove(unit)
        removed.append(unit)
        total, count = total - size, count - 1
    return removed


def sweep_scratch(keep: Path | None = None) -> list[Path]:
    root = scratch_root()
    units = [p for kind in root.glob("*") if kind.is_dir() for p in kind.iterdir()] if root.is_dir() else []
    return prune(units, scratch_bytes(), MAX_ITEMS, max_age(), keep)


def new_folder(kind: str) -> Path:
    """A fresh scratch sub-folder for one request's files (``kind`` groups them: runs, drawings,
    inline); older ones are swept first."""
    folder = scratch_root() / kind / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    with _lock:
        sweep_scratch(keep=folder)
    return folder


MIN_AGE = 120.0  # s: a file this young may still be on its way to a browser; only age removes it sooner


def sweep_folder(root: Path, age: float, max_bytes: int, since: float, spare: set[str]) -> list[Path]:
    """Delete files under ``root`` created after ``since`` (and not in ``spare``): those older than
    ``age`` seconds, then the oldest until the rest hold ``max_bytes`` (never younger than
    MIN_AGE). Empty folders go too. Returns what was removed."""
    now, found = time.time(), []
    for path in root.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_file() and st.st_ctime >= since and str(path) not in spare:
            found.append((st.st_ctime, path, st.st_size))
    found.sort(key=lambda item: item[0])
    total = sum(size for _, _, size in found)
    removed = []
    for ctime, path, size in found:
        if now - ctime > age or (total > max_bytes and now - ctime > min(MIN_AGE, age)):
            path.unlink(missing_ok=True)
            removed.append(path)
            total -= size
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            if now - folder.stat().st_mtime > min(MIN_AGE, age):  # not one just made for a new file
                folder.rmdir()  # only if empty
        except OSError:
            pass
    return removed


def gradio_cache_bytes() -> int:
    return int(float(os.environ.get("TARFLOW_GRADIO_CACHE_MB", "1024")) * 2**20)


def start_janitor(folder: str | Path, every: float, age: float, spare: Callable[[], set[str]]) -> threading.Thread:
    """Sweep ``folder`` every ``every`` seconds (see sweep_folder) from a daemon thread; files
    present now, and those ``spare()`` names, are never removed."""
    root, since = Path(folder), time.time()

    def run() -> None:
        while True:
            time.sleep(every)
            if root.is_dir():
                try:
                    sweep_folder(root, age, gradio_cache_bytes(), since, spare())
                except OSError:
                    pass  # a file vanished under us: the next round sees the rest

    thread = threading.Thread(target=run, name="tarflow-janitor", daemon=True)
    thread.start()
    return thread
