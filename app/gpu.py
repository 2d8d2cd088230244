"""Hugging Face ZeroGPU support: ``spaces.GPU`` where the ``spaces`` package is installed.

Off ZeroGPU the decorator does nothing, and without the package we do not import it at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

try:  # only present on Hugging Face Spaces (or when installed on purpose)
    import spaces
except ImportError:
    spaces = None

F = TypeVar("F", bound=Callable)


def on_gpu(fn: F, duration: int = 60) -> F:
    """``fn`` run on a ZeroGPU slice when there is one; ``fn`` itself otherwise."""
    if spaces is None:
        return fn
    return spaces.GPU(duration=duration)(fn)
