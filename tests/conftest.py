"""Test settings (offline hub, no analytics, the project root importable) and the fixtures several app
test modules share."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402  (after the settings above, which must come before anything imports gradio)


# Fixtures several app test modules share; a module that defines its own of the same name uses that.
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny models in TARFLOW_MODELS_DIR for one module; no pacing between streamed frames."""
    from app_models import make_tiny_models

    from app.tabs import generate

    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    old_dir, old_interval = os.environ.get("TARFLOW_MODELS_DIR"), generate.FRAME_INTERVAL
    os.environ["TARFLOW_MODELS_DIR"] = str(root)
    generate.FRAME_INTERVAL = 0.0
    yield root
    generate.FRAME_INTERVAL = old_interval
    if old_dir is None:
        os.environ.pop("TARFLOW_MODELS_DIR", None)
    else:
        os.environ["TARFLOW_MODELS_DIR"] = old_dir


@pytest.fixture(scope="module")
def server():
    """The shared ``python app.py`` test server (tiny models, fabricated datasets)."""
    from app_server import shared_server

    s = shared_server()
    yield s
    assert s.alive(), f"the server died:\n{s.log_tail()}"


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server.url, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))
