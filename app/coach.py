"""Visitors' training runs on a shared machine: one run per browser session, each trained on a
background thread of its own, at most ``SLOTS`` training at once and the rest waiting in line.

A run ends on Stop, when its page closes (``end_session``, from ``demo.unload``), when it has
trained for ``CAP_MINUTES``, or when another run of the same session replaces it. Runs kept in
memory (training, waiting, paused or ended) are at most ``MAX_RUNS``: a new one pushes out the
oldest that is not training, or is refused when all of them are. A training thread computes on
one intra-op thread at a lower priority (``NICE``), so the requests of the other tabs keep the
rest of the machine and come first on it.

Locks: the coach's condition guards every run's state and the line; a run's own ``lock`` is held
during one optimiser step and by anyone copying its weights, so a copy never sees half a step.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

SLOTS = int(os.environ.get("TARFLOW_TRAIN_SLOTS", "2"))
# Training threads run at this niceness (Linux schedules threads one by one): the CPU goes to the
# other tabs' requests first, and to training whenever they leave it idle.
NICE = int(os.environ.get("TARFLOW_TRAIN_NICE", "10"))
CAP_MINUTES = float(os.environ.get("TARFLOW_TRAIN_MINUTES", "10"))
MAX_RUNS = int(os.environ.get("TARFLOW_TRAIN_RUNS", "12"))
HISTORY = 600  # points kept per curve: older ones are thinned (every other one dropped)

WAITING, TRAINING, PAUSED, ENDED = "waiting", "training", "paused", "ended"
# The process's intra-op threads, read at import (on the main thread, before any run started).
DEFAULT_THREADS = torch.get_num_threads()


class Trainer(Protocol):
    step_count: int

    def step(self) -> float: ...


class MachineFull(Exception):
    """Every run kept is training or waiting: no room for another."""


@contextmanager
def one_thread() -> Iterator[None]:
    """This thread computes on one intra-op thread for the duration (the setting is per thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)  # which is also the default of threads started later


@dataclass
class Curve:
    """(step, value) pairs, thinned to at most HISTORY points so that memory stays bounded."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)
        if len(self.steps) > HISTORY:
            self.steps, self.values = self.steps[::2], self.values[::2]


@dataclass
class LiveRun:
    """One session's run. ``key`` names what it trains (kind and settings); ``evaluate`` is
    called every ``eval_every`` steps on the training thread and its number added to ``heldout``."""

    session: str
    key: tuple
    trainer: Trainer
    evaluate: Callable[[], float] | None = None
    eval_every: int = 25
    state: str = PAUSED
    reason: str = ""
    trained_s: float = 0.0
    loss: Curve = field(default_factory=Curve)
    heldout: Curve = field(default_factory=Curve)
    smoothed: float | None = None  # running mean of the training loss, for the curve
    viewer: int = 0  # the newest stream showing this run; older ones stop
    view_stage: int = -1  # the playground's warped-space slider (-1: the last stage)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _readers: int = 0
    _readers_lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def step(self) -> int:
        return self.trainer.step_count

    @property
    def ended(self) -> bool:
        return self.state == ENDED

    @contextmanager
    def between_steps(self) -> Iterator[Trainer]:
        """The trainer, held between two steps (to copy its weights): a training thread lets a
        waiting reader in after its current step. (A plain lock would not: the training thread
        takes it again at once, and a reader could wait for many steps.)"""
        with self._readers_lock:
            self._readers += 1
        try:
            with self.lock:
                yield self.trainer
        finally:
            with self._readers_lock:
                self._readers -= 1

    def one_step(self) -> None:
        """An optimiser step and its bookkeeping (the caller computes on one thread)."""
        with self.lock:
            loss = self.trainer.step()
            step = self.trainer.step_count
            value = self.evaluate() if self.evaluate is not None and (step % self.eval_every == 0 or step == 1) \
                else None
        if self._readers:
            time.sleep(0.001)  # let the reader waiting for the lock take it
        # A running mean over about 10 steps: single batches are noisy.
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        self.loss.add(step, self.smoothed)
        if value is not None:
            self.heldout.add(step, value)


class Coach:
    """Every session's run, the line of runs waiting to train, and the threads that train them."""

    def __init__(self, slots: int = SLOTS, max_runs: int = MAX_RUNS, cap_minutes: float = CAP_MINUTES):
        self.slots, self.max_runs, self.cap_s = max(1, slots), max(1, max_runs), cap_minutes * 60
        self._cond = threading.Condition()
        self._runs: dict[str, LiveRun] = {}
        self._line: deque[LiveRun] = deque()
        self._training: set[int] = set()  # id() of the runs holding a slot

    # ------------------------------------------------------------------ reading
    def get(self, session: str) -> LiveRun | None:
        with self._cond:
            return self._runs.get(session)

    def position(self, run: LiveRun) -> int:
        """0 while the run trains; its place in line (1 = next) while it waits."""
        with self._cond:
            return next((i + 1 for i, r in enumerate(self._line) if r is run), 0)

    def counts(self) -> dict[str, int]:
        with self._cond:
            states = [r.state for r in self._runs.values()]
        return {s: states.count(s) for s in (WAITING, TRAINING, PAUSED, ENDED)}

    # ------------------------------------------------------------------ changing
    def run_for(self, session: str, key: tuple, make: Callable[[], LiveRun]) -> LiveRun:
        """The session's run of ``key``, made with ``make`` when it has none that is not ended
        (an ended run or a run of other settings is replaced)."""
        with self._cond:
            run = self._runs.get(session)
            if run is not None and run.key == key and not run.ended:
                return run
        fresh = make()  # outside the lock: loading data or building a model takes a while
        with self._cond:
            old = self._runs.get(session)
            if old is not None:
                self._end(old, "replaced")
                del self._runs[session]
            self._make_room()
            self._runs[session] = fresh
            self._cond.notify_all()
        return fresh

    def train(self, run: LiveRun) -> None:
        """Start or resume ``run``: it joins the line and trains when a slot is free."""
        with self._cond:
            if run.ended or self._runs.get(run.session) is not run:
                return
            if run.state == PAUSED:
                run.state = WAITING
                self._line.append(run)
            if run.thread is None:
                ready = threading.Event()
                run.thread = threading.Thread(target=self._work, args=(run, ready), daemon=True,
                                              name=f"tarflow-train-{run.session[:8]}")
                run.thread.start()
            else:
                ready = None
            self._cond.notify_all()
        if ready is not None:
            ready.wait(timeout=10)
            # torch.set_num_threads(1) on the new thread also made 1 the default of threads started
            # later (request handlers among them): put the process's default back.
            torch.set_num_threads(DEFAULT_THREADS)

    def pause(self, session: str) -> LiveRun | None:
        with self._cond:
            run = self._runs.get(session)
            if run is not None and run.state in (WAITING, TRAINING):
                if run.state == WAITING:
                    self._line.remove(run)
                run.state = PAUSED
                self._cond.notify_all()
                self._settle(run)
            return run

    def stop(self, session: str, reason: str = "stopped") -> LiveRun | None:
        with self._cond:
            run = self._runs.get(session)
            if run is not None:
                self._end(run, reason)
                self._settle(run)
            return run

    def forget(self, session: str, reason: str = "page closed") -> None:
        """End the session's run and drop it (the page closed, or the view was reset)."""
        with self._cond:
            run = self._runs.pop(session, None)
            if run is not None:
                self._end(run, reason)

    def step_once(self, run: LiveRun) -> bool:
        """One step of a run that is not training (paused); False if it trains or has ended."""
        with self._cond:
            if run.state != PAUSED or self._runs.get(run.session) is not run:
                return False
        with one_thread():
            try:
                run.one_step()
            except FloatingPointError as e:
                with self._cond:
                    self._end(run, str(e))
        return True

    def set_view(self, session: str, stage: int) -> None:
        with self._cond:
            run = self._runs.get(session)
            if run is not None:
                run.view_stage = stage

    def new_viewer(self, run: LiveRun) -> int:
        with self._cond:
            run.viewer += 1
            return run.viewer

    # ------------------------------------------------------------------ inside
    def _settle(self, run: LiveRun, timeout: float = 10.0) -> None:
        """Wait (holding the condition) until the run's thread has finished the step it was in,
        so that the step count a caller reads next is final."""
        deadline = time.monotonic() + timeout
        while id(run) in self._training and time.monotonic() < deadline:
            self._cond.wait(timeout=0.05)

    def _end(self, run: LiveRun, reason: str) -> None:
        if run.ended:
            return
        if run.state == WAITING:
            self._line.remove(run)
        run.state, run.reason = ENDED, reason
        self._cond.notify_all()

    def _make_room(self) -> None:
        """Drop the oldest runs that are not training or waiting until there is room for one more."""
        while len(self._runs) >= self.max_runs:
            idle = [r for r in self._runs.values() if r.state in (PAUSED, ENDED)]
            if not idle:
                raise MachineFull(f"{len(self._runs)} training runs are in progress or waiting, the most this "
                                  f"server keeps; try again in a few minutes")
            oldest = min(idle, key=lambda r: r.created)
            self._end(oldest, "made room for another visitor's run")
            del self._runs[oldest.session]

    def _work(self, run: LiveRun, ready: threading.Event) -> None:
        """The run's thread: wait for a slot, train until paused or ended, repeat."""
        torch.get_num_threads()  # take up the process default first, then set this thread's own
        torch.set_num_threads(1)
        _lower_priority(NICE)
        ready.set()
        try:
            while self._wait_for_slot(run):
                self._train_while_allowed(run)
        except FloatingPointError as e:
            with self._cond:
                self._end(run, str(e))
        except Exception as e:  # a run that fails must not take the server with it
            with self._cond:
                self._end(run, f"failed: {type(e).__name__}: {e}")
        finally:
            with self._cond:
                self._training.discard(id(run))
                self._cond.notify_all()

    def _wait_for_slot(self, run: LiveRun) -> bool:
        """Block until the run is first in line and a slot is free (True), or it ends (False)."""
        with self._cond:
            while True:
                if run.ended:
                    return False
                if run.state == WAITING and self._line[0] is run and len(self._training) < self.slots:
                    self._line.popleft()
                    run.state = TRAINING
                    self._training.add(id(run))
                    self._cond.notify_all()
                    return True
                self._cond.wait(timeout=1.0)

    def _train_while_allowed(self, run: LiveRun) -> None:
        started = time.monotonic()
        spent = run.trained_s
        while run.state == TRAINING:
            run.one_step()
            run.trained_s = spent + time.monotonic() - started
            if run.trained_s >= self.cap_s:
                with self._cond:
                    self._end(run, f"time cap ({self.cap_s / 60:g} min of training)")
        with self._cond:
            self._training.discard(id(run))
            self._cond.notify_all()


def _lower_priority(nice: int) -> None:
    """This thread's niceness raised by ``nice`` (where the system allows; a no-op elsewhere)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


COACH = Coach()

