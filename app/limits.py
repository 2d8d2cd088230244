"""What one request may cost on a public server, and how errors are reported.

A public Space answers anyone who can call its endpoints, so every request is priced before it
runs and every error is logged as one short line:

* ``Job``: the work a request asks for (images x tokens x parameters x passes), checked against
  a per-device cap, with a deadline (and a ``cancel`` for a future Stop button);
* ``guard``: wraps each handler so that an error reaches the caller and the log as one line with
  the input truncated, and memory freed by the request goes back to the system;
* small helpers: whether the server is public, text echoed back at a bounded length.

Policy comes from the environment, so an operator can change it without touching code:
``SPACE_ID`` (set by Hugging Face Spaces) turns the public defaults on; ``TARFLOW_MAX_WORK`` and
``TARFLOW_TIME_LIMIT`` override the cap and the time limit (0 switches either off).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import gradio as gr

from app.runtime import release_memory

log = logging.getLogger("tarflow.app")

# Work per request, in parameter-token steps: one image's token passing once through every weight.
# On the development machine's 2 CPU cores the sampler does about 2.5e9 of them per second with
# guidance, so the CPU cap below is roughly 50 s of work: 64 guided, denoised emoji images (the
# largest bundled model, 9e10) fit; a 64 x 64 model of 15 M parameters gets 13 images, not 64.
DEFAULT_WORK_CAP = {"cpu": 1.2e11, "mps": 1e12, "cuda": 5e12}
# Wall-clock limit per request on a public server. ZeroGPU lends a GPU for 60 s per call (app/gpu.py).
DEFAULT_TIME_LIMIT = {"cpu": 120.0, "mps": 120.0, "cuda": 55.0}
# Largest file accepted from a visitor: a 12-megapixel phone photo as JPEG is 3-6 MB; the bundled
# 28-32 px models need a few kilobytes. (Gradio's own limit was 25 MB.)
DEFAULT_MAX_UPLOAD_MB = 8
MAX_ECHO = 60  # characters of user input repeated in a message
MAX_MESSAGE = 300  # characters of an error message, for the caller and the log
MAX_LOGGED_INPUT = 200  # characters of a request's arguments in the log line


def public() -> bool:
    """A Hugging Face Space (or any server started with SPACE_ID set) serves strangers."""
    return bool(os.environ.get("SPACE_ID"))


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return float(value)


def work_cap(device: str) -> float | None:
    """Parameter-token steps one request may use on ``device``; None: no cap (own machine)."""
    value = _env_float("TARFLOW_MAX_WORK")
    if value is None:
        return DEFAULT_WORK_CAP.get(device, DEFAULT_WORK_CAP["cpu"]) if public() else None
    return value if value > 0 else None


def time_limit(device: str) -> float | None:
    """Seconds one request may run on ``device``; None: no limit (own machine)."""
    value = _env_float("TARFLOW_TIME_LIMIT")
    if value is None:
        return DEFAULT_TIME_LIMIT.get(device, DEFAULT_TIME_LIMIT["cpu"]) if public() else None
    return value if value > 0 else None


def max_upload_bytes() -> int:
    """Largest upload (a file, an inline data URL, a drawing) in bytes: TARFLOW_MAX_UPLOAD_MB."""
    return int(float(os.environ.get("TARFLOW_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)) * 2**20)


def echo(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that quote user input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """The first line of ``text``, at most ``limit`` characters."""
    lines = str(text).strip().splitlines()
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


class WorkLimit(gr.Error):
    """A request that asks for more work than this server allows (or ran out of time); the
    message says what fits."""

    def __init__(self, message: str):
        super().__init__(message, title="Too much for this server", print_exception=False)


MAX_PAUSE = 15 * 60.0  # s a job may stay paused before it is stopped (it holds a worker meanwhile)


class Job:
    """One request's work on one model: its cost, the cap it must fit, and its deadline.

    Cost is ``images x passes x tokens x parameters``: sampling steps every token of every image
    through every weight once per pass (guidance runs two passes; denoising and likelihoods are
    about one more). ``check`` refuses a job over the cap; ``stopped`` turns true at the deadline
    or after ``cancel`` (a Stop button), and the work loop ends early and says why (``reason``).
    """

    def __init__(self, model: Any, images: int, passes: float, device: str, what: str = "this request"):
        self.params = sum(p.numel() for p in model.parameters())
        self.tokens = int(model.num_tokens)
        self.images = int(images)
        self.passes = float(passes)
        self.device = device
        self.what = what
        self.cap = work_cap(device)
        self.limit = time_limit(device)
        self.started = time.monotonic()
        self._cancelled = threading.Event()
        # Pause and single-step (a teacher stopping mid-run to explain): the loop calls ``hold``
        # after each frame it shows, which waits while paused until Step, Resume, Stop or the
        # deadline (a paused job still holds a worker, so the deadline keeps counting).
        self._gate = threading.Condition()
        self._paused = False
        self.was_paused = False  # ever, in this run (its time then says nothing about the next one)
        self._steps = 0
        self._paused_since: float | None = None
        self._pause_expired = False

    @property
    def per_image(self) -> float:
        return self.passes * self.tokens * self.params

    @property
    def cost(self) -> float:
        return self.images * self.per_image

    def max_images(self, ceiling: int) -> int:
        """Most images one request may ask for (at most ``ceiling``; 0 when even one is too much)."""
        if self.cap is None:
            return ceiling
        return int(min(ceiling, math.floor(self.cap / self.per_image)))

    def check(self) -> Job:
        """Raise WorkLimit if the job is over the cap; returns the job, started now."""
        if self.cap is not None and self.cost > self.cap:
            most = self.max_images(10**9)
            if most < 1:
                raise WorkLimit(f"this model is too large for {self.what} on this server's {self.device} "
                                f"(one image is {self.per_image:.2g} parameter-token steps; the limit per "
                                f"request is {self.cap:.2g}). Run it on your own machine or a GPU Space.")
            raise WorkLimit(f"{self.what} is limited to {most} image{'s' if most != 1 else ''} with this model "
                            f"on this server's {self.device} (asked for {self.images})")
        self.started = time.monotonic()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def cancel(self) -> None:
        self._cancelled.set()
        with self._gate:
            self._gate.notify_all()

    def pause(self) -> None:
        with self._gate:
            self._paused, self._steps, self.was_paused = True, 0, True

    def resume(self) -> None:
        with self._gate:
            self._paused, self._steps = False, 0
            self._gate.notify_all()

    def step(self) -> None:
        """Go on to the next frame, then pause (pauses a running job after its next frame)."""
        with self._gate:
            self._paused = self.was_paused = True
            self._steps += 1
            self._gate.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def hold(self) -> None:
        """Wait while paused (returns at once otherwise); a pending Step lets one frame through."""
        with self._gate:
            if self._paused and self._steps:
                self._steps -= 1
                return
            self._paused_since = time.monotonic() if self._paused else None
            while self._paused and not self._steps and not self.stopped:
                self._gate.wait(0.25)
            if self._steps:
                self._steps -= 1
            self._pause_expired = self._pause_expired or self._paused_too_long()
            self._paused_since = None

    def _paused_too_long(self) -> bool:
        since = self._paused_since
        return self._pause_expired or (since is not None and time.monotonic() - since > MAX_PAUSE)

    @property
    def stopped(self) -> bool:
        return (self._cancelled.is_set() or (self.limit is not None and self.elapsed() > self.limit)
                or self._paused_too_long())

    @property
    def reason(self) -> str:
        if self._cancelled.is_set():
            return "stopped on request"
        if self._paused_too_long():
            return f"stopped after {MAX_PAUSE / 60:g} min paused"
        return f"stopped at this server's time limit of {self.limit:g} s"


# Sampling runs two guidance passes and a denoising step (about one more); the cap is stated for
# that, the most a request can ask, so that "at most N images" holds whatever the settings.
SAMPLING_PASSES = 3


def sampling_job(model: Any, images: int, device: str, what: str = "Generate") -> Job:
    return Job(model, images, SAMPLING_PASSES, device, what)


def invert_job(model: Any, float64: bool, classify_passes: int, device: str) -> Job:
    """Forward, reverse and likelihood passes over one image, plus ``classify_passes`` forward
    passes to score the classes; float64 costs about twice float32."""
    return Job(model, 1, (3 + classify_passes) * (2 if float64 else 1), device, "Invert")


def interpolate_job(model: Any, steps: int, device: str) -> Job:
    """Two images encoded, ``steps`` decoded."""
    return Job(model, steps + 2, 1, device, "Interpolate")


T = TypeVar("T")


def watch(items: Iterable[T], job: Job) -> Iterator[T]:
    """``items`` until the job is stopped (deadline or cancel), then WorkLimit saying so. Stops
    between items, so a loop over blocks ends within one block of the deadline."""
    for item in items:
        yield item
        if job.stopped:
            raise WorkLimit(f"{job.what} {job.reason} ({job.elapsed():.0f} s) before it finished. "
                            "Try fewer images or a smaller model.")


# Running jobs by the session that started them, so that a Stop button (a request of its own)
# reaches the job of its page: Job.cancel is the one way work is stopped early.
_running_lock = threading.Lock()
_running: dict[str, Job] = {}


def track(job: Job, session: str | None) -> None:
    """Make ``job`` the one a Stop from ``session`` cancels (no session: nothing to track)."""
    if session:
        with _running_lock:
            _running[session] = job


def untrack(job: Job, session: str | None) -> None:
    if session:
        with _running_lock:
            if _running.get(session) is job:
                del _running[session]


def running(session: str | None) -> Job | None:
    """The job running for ``session`` (None when there is none)."""
    with _running_lock:
        return _running.get(session or "")


def stop(session: str | None) -> bool:
    """Cancel the job running for ``session``; False when there is none."""
    job = running(session)
    if job is None:
        return False
    job.cancel()
    return True


def cap_note(most: int, device: str, ceiling: int) -> str | None:
    """A sentence for the UI stating the cap, or None when the model is not limited by it."""
    if most >= ceiling:
        return None
    if most < 1:
        return f"too large to sample on this server's {device}"
    return f"at most {most} per request with this model on this server's {device}"


# ----------------------------------------------------------------------------------------------
# Errors: one line each, for the caller and the log.


def _args_summary(args: tuple, kwargs: dict) -> str:
    shown = [echo(a, 40) for a in args if not isinstance(a, gr.Progress)]
    shown += [f"{k}={echo(v, 40)}" for k, v in kwargs.items() if not isinstance(v, gr.Progress)]
    return one_line(", ".join(shown), MAX_LOGGED_INPUT)


def _where(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{os.path.basename(last.filename)}:{last.lineno}"


def _refusal(e: Exception, name: str, args: tuple, kwargs: dict) -> gr.Error:
    """Log ``e`` in one line and turn it into a one-line gr.Error that prints no traceback."""
    if isinstance(e, gr.Error):
        message = one_line(e.message)
        log.info("%s refused: %s | input: %s", name, message, _args_summary(args, kwargs))
        return gr.Error(message, duration=e.duration, visible=e.visible, title=e.title, print_exception=False)
    # Not a refusal we wrote: a bug or an unforeseen input. Say where, not the whole traceback.
    message = one_line(f"{type(e).__name__}: {e}")
    log.warning("%s failed at %s: %s | input: %s", name, _where(e), message, _args_summary(args, kwargs))
    return gr.Error(f"Something went wrong: {message}", print_exception=False)


def guard(fn: Callable, name: str) -> Callable:
    """``fn`` for an event: errors as one-line messages and log lines, memory released after.

    Keeps ``fn``'s signature (Gradio reads it for progress and event-data arguments) and its kind
    (a generator stays a generator, so streaming still works)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise _refusal(e, name, args, kwargs) from None
            finally:
                release_memory()
        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _refusal(e, name, args, kwargs) from None
        finally:
            release_memory()
    return call


class _OneLineTraceback:
    """Stands in for the ``traceback`` module inside Gradio's request loop, where errors raised
    before our handlers run (a value a Radio does not offer, a number over a Slider's maximum)
    would print a whole traceback that quotes the input. Everything else is the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)

    @staticmethod
    def print_exc(*args: Any, **kwargs: Any) -> None:
        e = sys.exc_info()[1]
        if e is not None:
            log.info("request refused by Gradio: %s", one_line(f"{type(e).__name__}: {e}"))


def quiet_gradio_tracebacks() -> None:
    """Log errors from Gradio's request handling as one truncated line each (see above)."""
    import gradio.queueing
    import gradio.routes

    for module in (gradio.queueing, gradio.routes):
        if getattr(module, "traceback", None) is traceback:
            module.traceback = _OneLineTraceback()  # type: ignore[assignment]


def configure_logging() -> None:
    """One line per event on stderr (the Space's log), unless the host configured logging."""
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s tarflow %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
