"""Process settings for the app, applied before gradio and torch are imported (see app.py)."""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def configure() -> None:
    """No analytics or telemetry; CPU settings that keep a shared 2-core machine responsive."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Idle OpenMP threads sleep instead of spinning. Spinning threads cost little on an idle
    # machine but, next to another busy process (a Space neighbour, a training job), they made a
    # 0.4 s sampling call take 40 s in our measurements.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _bound_malloc_arenas(int(os.environ.get("TARFLOW_MALLOC_ARENAS", "2")))


def _bound_malloc_arenas(n: int) -> None:
    """Gradio runs handlers on a pool of up to 40 threads, and glibc gives each allocating thread
    its own heap; memory torch frees stays spread over those heaps, so the resident size crept up
    with every burst of requests (375 MB -> 1.45 GB over 6 bursts of 16). Two shared heaps keep it
    flat (about 760 MB). Same as MALLOC_ARENA_MAX=2, but set from inside the process."""
    if n <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, n)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass


def release_memory() -> None:
    """Hand memory freed by the last request back to the system. Big temporary tensors (the
    denoising step's activations, the sampler's key/value caches) come from glibc's heaps, which
    keep freed pages: a 64-image emoji request left the process ~950 MB larger until trimmed
    (back to ~430 MB). Trimming takes about a millisecond; elsewhere than glibc it does nothing."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl has no malloc_trim
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()
