"""Start ``python app.py`` (the README's command) on a free local port, for API and browser tests.

One server per test process is shared by every module that asks for it (``shared_server``); it
serves tiny models from a temporary TARFLOW_MODELS_DIR, offline, and stops when the process ends.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from app_models import make_tiny_datasets, make_tiny_models

from benchmarks.app_process import ROOT, start_app  # noqa: F401  (ROOT: re-exported for the tests)
from benchmarks.app_process import AppProcess as AppServer

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
                             "TARFLOW_OOD_PER_SET": "12",
                             # runs left by the API tests must not queue the browser test behind them
                             "TARFLOW_TRAIN_SLOTS": "8"})
        server = _shared
        atexit.register(lambda: (server.stop(), shutil.rmtree(models_dir, ignore_errors=True)))
    return _shared
