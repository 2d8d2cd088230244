"""The Train tab's speed on this machine: the 2D playground, Generate while runs train, and how
soon digits trained from scratch are recognisable.

    python benchmarks/live_training.py [--seconds 10] [--digits-minutes 8] [--skip points,generate,digits]

1. Playground, default size (tarflow.live.PointSettings): optimiser steps per second of the
   trainer alone on one thread; then as the app runs it, training on its background thread while
   this thread draws frames (app.tabs.train.PointView) at the tab's frame rate: frames per second
   drawn and steps per second meanwhile; and through ``python app.py`` with gradio_client, frames
   received (their pictures fetched) and steps made. Aims: >= 50 steps/s and >= 5 frames/s on 2 cores.
2. Generate latency (the Generate tab's handler, 16 guided and denoised MNIST images, no frame
   pacing) with 0, 1 and 2 playground runs training in this process, measured in turns in one run.
3. Digits from scratch (tarflow.live.DigitTrainer, one thread): every --every seconds of training
   (the clock stops while it is judged), 100 samples (10 per class, as the tab draws them) are
   judged by the MNIST classifier of benchmarks/quality.py (the samples upsampled 14 -> 28):
   class-consistency, with bits/dim, against training time. The clock is the training thread's
   CPU time: on a core of its own that is its wall time, and it does not count what other
   processes on a busy machine take (wall time is printed beside it).

A timing benchmark, not a test: it prints numbers and never fails. On a shared machine the
absolute numbers move with the load; the ratios in part 2 are measured side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app.runtime import configure  # noqa: E402

configure()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from app.coach import Coach, LiveRun, one_thread  # noqa: E402
from app.tabs.train import FPS, PointView  # noqa: E402
from tarflow.live import DigitSettings, DigitTrainer, PointSettings, PointTrainer, digit_grid_samples  # noqa: E402


def playground(seconds: float) -> None:
    settings = PointSettings()
    print(f"\n1. Playground, default size: {settings.blocks} blocks x {settings.layers} layer, width "
          f"{settings.width}, batch {settings.batch}")
    trainer = PointTrainer(settings)
    with one_thread():
        for _ in range(10):
            trainer.step()
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            trainer.step()
            steps += 1
    alone = steps / (time.perf_counter() - start)
    print(f"  trainer alone, one thread:         {alone:6.1f} steps/s")

    coach = Coach(slots=1, max_runs=2, cap_minutes=60)
    run = coach.run_for("bench", ("points",), lambda: LiveRun("bench", ("points",), PointTrainer(settings),
                                                              evaluate=None))
    coach.train(run)
    view, period, times = PointView(settings), 1 / FPS, []
    time.sleep(0.5)
    first_step, start = run.step, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        view.frame(run, coach=coach)
        times.append(time.perf_counter() - t)
        time.sleep(max(0.0, period - (time.perf_counter() - t)))
    elapsed = time.perf_counter() - start
    steps = run.step - first_step
    coach.forget("bench")
    run.thread.join(10)
    print(f"  training while frames are drawn:   {steps / elapsed:6.1f} steps/s   (aim >= 50)")
    print(f"  frames drawn:                      {len(times) / elapsed:6.1f} frames/s  (aim >= 5; the tab asks "
          f"for {FPS:g}); one frame median {1e3 * statistics.median(times):.0f} ms, "
          f"max {1e3 * max(times):.0f} ms")


def through_the_app(seconds: float) -> None:
    """The same through ``python app.py`` and gradio_client, as a page sees it: frames arriving
    (each frame's three pictures fetched, as a browser does) and the steps the run made."""
    import re
    import urllib.request

    from app_process import start_app
    from gradio_client import Client

    server = start_app()
    try:
        client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)
        s = PointSettings()
        job = client.submit(s.target, s.blocks, s.layers, s.width, s.lr, s.batch, s.seed, None, api_name="/train")
        frames, first, start = 0, None, time.perf_counter()
        for update in job:
            for picture in update[:3]:
                with urllib.request.urlopen(picture["url"], timeout=30) as r:
                    r.read()
            step = int(re.search(r"step ([\d,]+)", update[4]).group(1).replace(",", ""))
            if first is None:
                first, start = step, time.perf_counter()
                continue
            frames += 1
            if time.perf_counter() - start > seconds:
                break
        elapsed = time.perf_counter() - start
        client.predict(api_name="/train_stop")
        print(f"  through the app (gradio_client):   {(step - first) / elapsed:6.1f} steps/s, "
              f"{frames / elapsed:.1f} frames/s received (pictures fetched)")
    finally:
        server.stop()


def generate_latency(repeats: int) -> None:
    from app.models import MODELS
    from app.picker import default_classes
    from app.tabs import generate

    print("\n2. Generate: 16 guided, denoised MNIST images (the tab's handler, no frame pacing), "
          "with playground runs training in this process")
    model = MODELS.get("mnist")
    args = ["mnist", default_classes(model), 16, 0, 2.0, "class", 1.0, False, "ab", 1.0, True, model.noise_std,
            False, True]
    generate.FRAME_INTERVAL = 0.0
    noop = lambda *a, **k: None  # noqa: E731
    list(generate.generate(*args, progress=noop))  # warm-up
    coach = Coach(slots=2, max_runs=4, cap_minutes=60)
    results: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for r in range(repeats):
        for training in (0, 1, 2):  # in turns, so that a change in the machine's load hits all three
            for k in range(training):
                coach.train(coach.run_for(f"s{k}", ("points",), lambda k=k: LiveRun(
                    f"s{k}", ("points",), PointTrainer(PointSettings(seed=k)))))
            time.sleep(0.3)
            args[3] = r
            t = time.perf_counter()
            list(generate.generate(*args, progress=noop))
            results[training].append(time.perf_counter() - t)
            for k in range(training):
                run = coach.get(f"s{k}")
                coach.forget(f"s{k}")
                run.thread.join(10)
    base = statistics.median(results[0])
    for training, times in results.items():
        med = statistics.median(times)
        print(f"  {training} runs training: median {med:6.3f} s  best {min(times):6.3f} s  "
              f"({med / base:4.2f}x; n={len(times)})")


def digits(minutes: float, every: float, data_dir: str) -> None:
    from quality import load_judge, predict

    print(f"\n3. Digits from scratch, one thread, up to {minutes:g} min of training; judged every {every:g} s")
    trainer = DigitTrainer(DigitSettings(seed=0, data_dir=data_dir))
    judge = load_judge("mnist", data_dir)
    want = torch.arange(10).repeat_interleave(10)
    print(f"  {'train s':>8} {'wall s':>7} {'steps':>6} {'bits/dim':>9} {'consistent':>11}")
    trained, wall, next_check, reached = 0.0, 0.0, every, {}
    with one_thread():
        while trained < minutes * 60:
            t, w = time.thread_time(), time.perf_counter()
            bits = trainer.step()
            trained += time.thread_time() - t
            wall += time.perf_counter() - w
            if trained < next_check:
                continue
            next_check += every
            images = digit_grid_samples(trainer.averaged(), 10)
            if images is None:
                share = float("nan")
            else:
                big = F.interpolate(images, size=28, mode="bilinear", align_corners=False).clamp(-1, 1)
                share = (predict(judge, big) == want).float().mean().item()
            for level in (0.5, 0.8, 0.9):
                if share >= level and level not in reached:
                    reached[level] = (trained, trainer.step_count)
            print(f"  {trained:8.0f} {wall:7.0f} {trainer.step_count:6d} {bits:9.3f} {share:10.0%}", flush=True)
    for level in (0.5, 0.8, 0.9):
        where = reached.get(level)
        text = f"after {where[0]:.0f} s of training ({where[1]} steps)" if where else "not within the time given"
        print(f"  class-consistency >= {level:.0%}: {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of each playground measurement")
    parser.add_argument("--repeats", type=int, default=5, help="Generate calls per setting")
    parser.add_argument("--digits-minutes", type=float, default=8)
    parser.add_argument("--every", type=float, default=30, help="seconds of training between digit judgements")
    parser.add_argument("--data-dir", default=os.environ.get("TARFLOW_DATA_DIR", "data"))
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: points, generate, digits")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    if "points" not in skip:
        playground(args.seconds)
        through_the_app(args.seconds)
    if "generate" not in skip:
        generate_latency(args.repeats)
    if "digits" not in skip:
        digits(args.digits_minutes, args.every, args.data_dir)


if __name__ == "__main__":
    main()
