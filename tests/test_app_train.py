"""The Train tab through gradio_client, against ``python app.py``: frames stream while the loss
falls, Stop ends the run, two sessions train side by side without mixing, bad input is refused."""

from __future__ import annotations

import re
import time

import pytest
from app_server import shared_server

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from tarflow.live import PointSettings  # noqa: E402
from tarflow.points import gaussian_nll, make_points  # noqa: E402

PLAYGROUND = dict(target="two moons", blocks=4, layers=1, width=32, lr=0.005, batch=128, seed=0, drawing=None)


def client(server) -> Client:
    # A Client is one browser session (its own session hash), like one open page.
    return Client(server.url, verbose=False, analytics_enabled=False, download_files=False)


@pytest.fixture(scope="module")
def server():
    s = shared_server()
    yield s
    assert s.alive(), f"the server died:\n{s.log_tail()}"


def curves(plot: dict) -> dict[str, list[tuple[float, float]]]:
    """A LinePlot's rows (step, value, curve) grouped by curve."""
    data = plot.get("data") if "data" in plot else plot["value"]["data"]
    out: dict[str, list[tuple[float, float]]] = {}
    for step, value, name in data:
        out.setdefault(name, []).append((step, value))
    return out


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return float(match.group(1).replace(",", ""))


def watch(job, seconds: float, least: int = 0) -> list:
    """The updates a streaming job sends within ``seconds`` (and at least ``least`` of them)."""
    updates, start = [], time.monotonic()
    for update in job:
        updates.append(update)
        if time.monotonic() - start > seconds and len(updates) >= least:
            break
    return updates


def test_training_streams_frames_with_falling_loss_and_stop_ends_it(server):
    c = client(server)
    job = c.submit(*PLAYGROUND.values(), api_name="/train")
    updates = watch(job, seconds=10, least=4)
    assert len(updates) >= 4
    density, samples, warped, plot, status = updates[-1]
    assert all(isinstance(p, dict) or p for p in (density, samples, warped))
    table = curves(plot)
    train = table["training (smoothed)"]
    held = table["held-out"]
    assert train[-1][0] > train[0][0] > 0  # steps advance between frames
    assert held[-1][1] < held[0][1] - 0.1, held  # the held-out NLL falls
    gauss = gaussian_nll(*make_points("two moons", 6000, 0).split(4000))
    assert table["one Gaussian, held-out"][0][1] == pytest.approx(gauss, abs=1e-6)
    assert "mass on the grid" in status
    assert 0.95 < number(r"mass on the grid \*\*([\d.]+)", status) < 1.02
    step_before = number(r"step ([\d,]+)", status)
    stopped = c.predict(api_name="/train_stop")
    assert stopped.startswith("**Stopped**")
    deadline = time.monotonic() + 20
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.done(), "the stream went on after Stop"
    last = job.outputs()[-1][4]
    assert "Ended (stopped)" in last and number(r"step ([\d,]+)", last) >= step_before


def test_two_sessions_train_at_once_without_mixing(server):
    a, b = client(server), client(server)
    job_a = a.submit(*{**PLAYGROUND, "target": "rings"}.values(), api_name="/train")
    job_b = b.submit(*{**PLAYGROUND, "target": "8 gaussians", "seed": 3}.values(), api_name="/train")
    ups_a, ups_b = watch(job_a, seconds=6, least=3), watch(job_b, seconds=3, least=3)
    for ups, target, seed in ((ups_a, "rings", 0), (ups_b, "8 gaussians", 3)):
        want = gaussian_nll(*make_points(target, 6000, seed).split(4000))
        assert curves(ups[-1][3])["one Gaussian, held-out"][0][1] == pytest.approx(want, abs=1e-6)
        assert "**Training**" in ups[-1][4] or "Waiting" in ups[-1][4]
    # pausing one session leaves the other training
    paused = a.predict(api_name="/train_pause")
    assert paused.startswith("**Paused**")
    steps_b = number(r"step ([\d,]+)", ups_b[-1][4])
    later = watch(job_b, seconds=3, least=2)
    assert number(r"step ([\d,]+)", later[-1][4]) > steps_b
    # the pause answers once the step in flight has finished, so its count is final (the stream's
    # last frame may not have caught up with it on a loaded machine)
    paused_at = number(r"step ([\d,]+)", paused)
    assert number(r"step ([\d,]+)", a.predict(*{**PLAYGROUND, "target": "rings"}.values(), api_name="/train_step")[4]) \
        == paused_at + 1  # Step takes exactly one step of the paused run
    b.predict(api_name="/train_stop")


def test_reset_shows_the_untrained_flow_and_bad_settings_are_refused(server):
    c = client(server)
    out = c.predict(*{**PLAYGROUND, "target": "checkerboard"}.values(), api_name="/train_reset")
    assert "step 0" in out[4] and "Ready" in out[4]
    # out-of-range values meet the widgets' own checks (Gradio's one-line messages) or ours
    with pytest.raises(AppError, match="maximum value 12"):
        c.predict(*{**PLAYGROUND, "blocks": 40}.values(), api_name="/train_reset")
    with pytest.raises(AppError, match="not in the list of choices"):
        c.predict(*{**PLAYGROUND, "width": 40}.values(), api_name="/train_reset")
    with pytest.raises(AppError, match="swiss roll"):
        c.predict(*{**PLAYGROUND, "target": "swiss roll"}.values(), api_name="/train")
    with pytest.raises(AppError, match="canvas"):
        c.predict(*{**PLAYGROUND, "target": "drawn"}.values(), api_name="/train")
    assert PointSettings().width == 32  # the page's default is the benchmarked size


def test_digits_stream_a_grid_and_a_bits_per_dim_curve(server):
    c = client(server)
    job = c.submit(0, api_name="/train_digits")
    updates = watch(job, seconds=4, least=2)
    grid, plot, status = updates[-1]
    assert grid is not None and "bits/dim" in status and "noise floor 5.73" in status
    c.predict(api_name="/train_stop")
    deadline = time.monotonic() + 30
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.done()
