"""Sharing the machine between visitors' training runs (app/coach.py), in this process: the line
and its positions, pause and stop, the time cap, bounded memory, one thread per run."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from app import coach as coach_module
from app.coach import ENDED, PAUSED, TRAINING, WAITING, Coach, Curve, LiveRun, MachineFull
from app.tabs import train as train_tab


class Counter:
    """A trainer whose steps take ``pause`` seconds and record the thread count and the niceness
    they ran with."""

    def __init__(self, pause: float = 0.002):
        self.step_count, self.pause, self.threads, self.nice = 0, pause, set(), set()

    def step(self) -> float:
        self.threads.add(torch.get_num_threads())
        if hasattr(os, "getpriority"):
            self.nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        time.sleep(self.pause)
        self.step_count += 1
        return 1.0 / self.step_count


def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def started(coach: Coach, session: str, key: tuple = ("k",)) -> LiveRun:
    run = coach.run_for(session, key, lambda: LiveRun(session, key, Counter()))
    coach.train(run)
    return run


def test_runs_beyond_the_slots_wait_in_line_with_their_position():
    coach = Coach(slots=1, max_runs=5, cap_minutes=5)
    a, b, c = started(coach, "a"), started(coach, "b"), started(coach, "c")
    until(lambda: a.state == TRAINING)
    assert (b.state, c.state) == (WAITING, WAITING)
    assert (coach.position(a), coach.position(b), coach.position(c)) == (0, 1, 2)
    steps_b = b.step
    coach.pause("a")  # a paused run gives its slot to the next in line
    until(lambda: b.state == TRAINING)
    assert coach.position(c) == 1 and a.state == PAUSED and steps_b == 0
    coach.train(a)  # resuming joins the end of the line
    assert coach.position(a) == 2
    coach.stop("b")
    until(lambda: c.state == TRAINING)
    assert b.state == ENDED and b.reason == "stopped" and coach.position(a) == 1
    for s in "abc":
        coach.forget(s)
    until(lambda: not any(r.thread.is_alive() for r in (a, b, c)))


def test_a_paused_run_does_not_step_and_step_once_takes_exactly_one():
    coach = Coach(slots=2, max_runs=5, cap_minutes=5)
    run = started(coach, "s")
    until(lambda: run.step > 3)
    coach.pause("s")
    until(lambda: coach.counts()[TRAINING] == 0)
    at = run.step
    time.sleep(0.05)
    assert run.step == at
    assert coach.step_once(run) and run.step == at + 1
    coach.forget("s")
    assert not coach.step_once(run) and run.state == ENDED and coach.get("s") is None


def test_the_time_cap_ends_a_run():
    coach = Coach(slots=2, max_runs=5, cap_minutes=0.3 / 60)  # 0.3 s
    run = started(coach, "s")
    until(lambda: run.ended, timeout=10)
    assert run.reason.startswith("time cap") and run.trained_s >= 0.3
    steps = run.step
    time.sleep(0.05)
    assert run.step == steps and not run.thread.is_alive()


def test_memory_is_bounded_by_the_runs_kept():
    coach = Coach(slots=1, max_runs=2, cap_minutes=5)
    a, _ = started(coach, "a"), started(coach, "b")
    with pytest.raises(MachineFull, match="2 training runs"):
        started(coach, "c")
    coach.pause("a")
    c = started(coach, "c")  # the paused run makes room
    assert a.ended and coach.get("a") is None and coach.get("c") is c
    for s in "bc":
        coach.forget(s)
    curve = Curve()
    for k in range(5000):
        curve.add(k, float(k))
    assert len(curve.steps) <= coach_module.HISTORY and curve.steps[-1] == 4999


def test_training_threads_compute_on_one_thread_at_low_priority_and_leave_the_default_alone():
    coach = Coach(slots=1, max_runs=2, cap_minutes=5)
    run = started(coach, "s")
    until(lambda: run.step > 3)
    coach.forget("s")
    assert run.trainer.threads == {1}
    if hasattr(os, "getpriority") and coach_module.NICE > 0:
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert run.trainer.nice == {min(19, own + coach_module.NICE)}
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [coach_module.DEFAULT_THREADS]


class Diverging(Counter):
    def step(self) -> float:
        if self.step_count == 3:
            raise FloatingPointError("the loss is no longer finite")
        return super().step()


def test_a_diverging_run_ends_with_the_reason():
    coach = Coach(slots=1, max_runs=2, cap_minutes=5)
    run = coach.run_for("s", ("k",), lambda: LiveRun("s", ("k",), Diverging()))
    coach.train(run)
    until(lambda: run.ended)
    assert run.reason == "the loss is no longer finite" and run.step == 3


def test_a_second_run_of_a_session_replaces_the_first():
    coach = Coach(slots=2, max_runs=5, cap_minutes=5)
    first = started(coach, "s", ("one",))
    assert coach.run_for("s", ("one",), lambda: pytest.fail("not made again")) is first
    second = started(coach, "s", ("two",))
    assert first.ended and first.reason == "replaced" and coach.get("s") is second
    coach.forget("s")


def test_the_playground_stream_ends_at_the_time_cap(monkeypatch):
    monkeypatch.setattr(train_tab, "COACH", Coach(slots=1, max_runs=3, cap_minutes=0.5 / 60))
    frames = list(train_tab.train("two moons", 2, 1, 16, 0.003, 64, 0, None, None))
    status = frames[-1][4]
    assert "Ended (time cap" in status and len(frames) >= 2
    run = train_tab.COACH.get("local")
    assert run.ended and run.step > 0


def test_closing_the_page_ends_its_run_only(monkeypatch):
    monkeypatch.setattr(train_tab, "COACH", Coach(slots=2, max_runs=3, cap_minutes=5))
    page = SimpleNamespace(session_hash="page-a")
    other = SimpleNamespace(session_hash="page-b")
    streams = [train_tab.train("two moons", 2, 1, 16, 0.003, 64, s, None, r) for s, r in ((0, page), (1, other))]
    for stream in streams:
        next(stream)  # each run started and drew its first frame
    run_a, run_b = train_tab.COACH.get("page-a"), train_tab.COACH.get("page-b")
    train_tab.end_session(page)
    assert run_a.ended and run_a.reason == "page closed" and train_tab.COACH.get("page-a") is None
    assert list(streams[0]) == []  # the closed page's stream ends without another frame
    assert not run_b.ended
    train_tab.end_session(other)


def test_stopping_a_run_waiting_in_line_ends_its_stream_with_the_reason(monkeypatch):
    """Two slots, three pages: the third waits in line; its Stop ends it, and its stream's last
    frame says so (the page is not left showing "Waiting in line"); the other two train on."""
    monkeypatch.setattr(train_tab, "COACH", Coach(slots=2, max_runs=4, cap_minutes=5))
    pages = [SimpleNamespace(session_hash=f"page-{k}") for k in "abc"]
    streams = [train_tab.train("two moons", 2, 1, 16, 0.003, 64, k, None, page) for k, page in enumerate(pages)]
    firsts = [next(stream)[4] for stream in streams]
    until(lambda: train_tab.COACH.get("page-a").state == TRAINING and train_tab.COACH.get("page-b").state == TRAINING)
    waiting = train_tab.COACH.get("page-c")
    assert waiting.state == WAITING and "Waiting in line: 1st" in firsts[2], firsts[2]
    assert train_tab.stop(pages[2]).startswith("**Stopped** at step 0")
    rest = list(streams[2])
    assert rest and "Ended (stopped)" in rest[-1][4] and waiting.step == 0
    assert train_tab.COACH.get("page-a").state == TRAINING and train_tab.COACH.get("page-b").state == TRAINING
    for page in pages:
        train_tab.end_session(page)
