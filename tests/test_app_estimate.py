"""The app's time estimate, memory check and Stop button (app/estimate.py, limits.track/stop)."""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from app_models import make_tiny_models, noop
from helpers import make_model

from app import estimate, limits, models
from app.tabs import generate


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    make_tiny_models(tmp_path / "models")
    monkeypatch.setenv("TARFLOW_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path / "models"


def test_step_time_is_measured_once_and_scales_to_a_sample():
    model = make_model(num_classes=3)
    first = estimate.step_seconds(model, 4)
    assert 0 < first < 1
    assert estimate.step_seconds(model, 4) == first  # cached per model, device, dtype and batch
    assert estimate.sample_seconds(model, 4) == pytest.approx(first * model.num_blocks * (model.num_tokens - 1))
    assert estimate.stop_every(model, 4) >= 1


def test_stop_every_follows_the_step_cost(monkeypatch):
    model = make_model(num_classes=3)
    monkeypatch.setattr(estimate, "step_seconds", lambda *a, **k: 0.2)
    assert estimate.stop_every(model, 1) == 2  # 0.5 s / 0.2 s per step
    monkeypatch.setattr(estimate, "step_seconds", lambda *a, **k: 3.0)
    assert estimate.stop_every(model, 1) == 1


def test_memory_check_names_the_shortfall(monkeypatch):
    model = make_model(num_classes=3)
    assert estimate.memory_problem(model, 4) is None
    monkeypatch.setattr(estimate, "available_bytes", lambda: 10_000)
    message = estimate.memory_problem(model, 64)
    assert message is not None and "64 images need" in message and "fewer images" in message
    assert estimate.duration(0.3) == "under a second" and estimate.duration(200) == "about 3 min"


def test_estimate_note_for_a_listed_model(tiny):
    note = generate.estimate_note("tiny-cond", 6, 1.0)
    assert note.startswith("Estimated on this CPU:") and "6 images" in note and "2 x 15 steps" in note
    assert generate.estimate_note("no-such-model", 6) == ""


def test_paced_time_is_the_longer_of_the_token_steps_and_the_frames(monkeypatch):
    model = make_model(num_classes=3)
    monkeypatch.setattr(estimate, "sample_seconds", lambda *a, **k: 10.0)
    assert estimate.paced_seconds(model, 4, True, 20, 0.03) == pytest.approx(10.0)  # compute-bound
    assert estimate.paced_seconds(model, 4, True, 20, 1.0) == pytest.approx(20.0)  # one frame a second


def test_estimate_counts_the_shown_frames_then_says_the_last_runs_time(tiny, monkeypatch):
    """Before a run: the token steps or the streamed frames at their pace, whichever is longer.
    After a finished plain run of the same model and batch: that run's own time. Slow-motion runs
    do not count."""
    monkeypatch.setattr(generate, "FRAME_INTERVAL", 0.25)
    model = models.MODELS.get("tiny-cond")
    frames = generate.shown_frames(model)
    assert frames >= model.num_blocks * 2
    note = generate.estimate_note("tiny-cond", 5, 1.0)
    assert f"shown as {frames} frames at most 4 a second" in note
    assert estimate.paced_seconds(model, 5, True, frames, 0.25) >= 0.25 * frames
    monkeypatch.setattr(generate, "FRAME_INTERVAL", 0.0)  # unpaced (as the browser tests run it)
    assert generate.estimate_note("tiny-cond", 5, 1.0).endswith("2 x 15 steps)")
    args = dict(model_key="tiny-cond", classes=["star"], num=5, seed=0, guidance=1.0, kind="class", attn_temp=1.0,
                annealed=False, guide_what="ab", temperature=1.0, denoise=True, sigma=0.1)
    start = time.perf_counter()
    assert list(generate.generate(**args, slow=False, progress=noop))[-1][1].startswith("**Done**")
    took = time.perf_counter() - start
    seen = estimate.observed_seconds(model, 5, True)
    assert seen is not None and 0 < seen <= took
    assert f"the last such run here took {seen:.1f} s" in generate.estimate_note("tiny-cond", 5, 1.0)
    assert estimate.observed_seconds(model, 4, True) is None  # another batch size: not measured yet
    monkeypatch.setattr(generate, "SLOW_INTERVAL", 0.0)
    list(generate.generate(**args, slow=True, progress=noop))
    assert estimate.observed_seconds(model, 5, True) == seen


def test_stop_button_ends_the_running_generate(tiny, monkeypatch):
    """Stop from the same session cancels the job: the stream's next update says so and it ends."""
    monkeypatch.setattr(estimate, "STOP_WITHIN", 1e-6)  # hand back control after every token
    monkeypatch.setattr(generate, "FRAME_INTERVAL", 0.0)
    request = SimpleNamespace(session_hash="page-1")
    args = dict(model_key="tiny-cond", classes=["star"], num=2, seed=0, guidance=1.0, kind="class", attn_temp=1.0,
                annealed=False, guide_what="ab", temperature=1.0, denoise=True, sigma=0.1, slow=False)
    stream = generate.generate(**args, progress=noop, request=request)
    next(stream)
    next(stream)
    assert generate.stop(SimpleNamespace(session_hash="other page")) == "Nothing is running."
    assert generate.stop(request) == "Stopping…"
    start = time.perf_counter()
    rest = list(stream)
    assert time.perf_counter() - start < 1.0
    assert rest and "**Stopped** · stopped on request" in rest[-1][1]
    assert generate.stop(request) == "Nothing is running."  # untracked once it ended
    models.MODELS.get("tiny-cond")  # the model stays usable


def test_pause_step_and_resume_a_running_generate(tiny, monkeypatch):
    """Pause holds the stream after the frame on screen; Step lets exactly one more frame through
    and pauses again; Resume finishes it, with the same images as a run never paused."""
    monkeypatch.setattr(estimate, "STOP_WITHIN", 1e-6)
    monkeypatch.setattr(generate, "FRAME_INTERVAL", 0.0)
    args = dict(model_key="tiny-cond", classes=["star"], num=2, seed=3, guidance=1.0, kind="class", attn_temp=1.0,
                annealed=False, guide_what="ab", temperature=1.0, denoise=True, sigma=0.1, slow=False)
    plain = generate.RUNS.get(list(generate.generate(**args, progress=noop))[-1][7])
    request = SimpleNamespace(session_hash="page-pause")
    stream = generate.generate(**args, progress=noop, request=request)
    next(stream)
    next(stream)
    assert generate.pause(SimpleNamespace(session_hash="other page")) == "Nothing is running."
    assert generate.pause(request) == "pause"
    updates: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [*map(updates.put, stream), updates.put(None)], daemon=True).start()

    def until_paused() -> list:
        seen = []
        while True:
            update = updates.get(timeout=10)
            assert update is not None, "the run ended while paused"
            seen.append(update)
            if isinstance(update[1], str) and update[1].startswith("**Paused**"):
                return seen

    until_paused()
    time.sleep(0.4)
    assert updates.empty()  # held
    assert generate.step(request) == "step"
    stepped = until_paused()
    assert len(stepped) == 2 and isinstance(stepped[0][0], np.ndarray)  # one new frame, then paused again
    assert "token" in stepped[1][1] and "**Step** draws the next frame" in stepped[1][1]
    time.sleep(0.4)
    assert updates.empty()
    assert generate.resume(request) == "resume"
    rest = []
    while (update := updates.get(timeout=30)) is not None:
        rest.append(update)
    assert rest[-1][1].startswith("**Done**")
    assert torch.equal(generate.RUNS.get(rest[-1][7]).images, plain.images)
    assert generate.resume(request) == "Nothing is running."


def test_a_paused_job_still_answers_stop_and_its_deadline(monkeypatch):
    model = make_model()
    job = limits.Job(model, 1, 1, "cpu")
    job.pause()
    threading.Timer(0.3, job.cancel).start()
    start = time.perf_counter()
    job.hold()
    assert 0.2 < time.perf_counter() - start < 2 and job.stopped
    monkeypatch.setattr(limits, "MAX_PAUSE", 0.2)
    job = limits.Job(model, 1, 1, "cpu")
    job.pause()
    job.hold()  # returns once paused too long
    assert job.stopped and job.reason == "stopped after 0.00333333 min paused"
    running = limits.Job(model, 1, 1, "cpu")
    running.hold()  # not paused: returns at once
    assert not running.stopped


def test_track_and_stop_are_per_session():
    model = make_model()
    a, b = limits.Job(model, 1, 1, "cpu"), limits.Job(model, 1, 1, "cpu")
    limits.track(a, "s-a")
    limits.track(b, "s-b")
    assert limits.stop("s-a") and a.stopped and not b.stopped
    limits.untrack(a, "s-a")
    limits.untrack(b, "s-b")
    assert not limits.stop("s-a") and not limits.stop(None)


def test_generate_with_jacobi_decoding_matches_sequential(tiny):
    args = dict(model_key="tiny-cond", classes=["star"], num=2, seed=0, guidance=1.0, kind="class", attn_temp=1.0,
                annealed=False, guide_what="ab", temperature=1.0, denoise=False, sigma=0.1, slow=False)
    seq = list(generate.generate(**args, progress=noop))[-1]
    jac = list(generate.generate(**args, decode="jacobi", progress=noop))[-1]
    seq_run, jac_run = generate.RUNS.get(seq[7]), generate.RUNS.get(jac[7])
    assert float((seq_run.images - jac_run.images).abs().max()) < 0.02
    with pytest.raises(Exception, match="Decoding must be one of"):
        list(generate.generate(**args, decode="parallel", progress=noop))
