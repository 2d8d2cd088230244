"""App latency: what a user waits for, measured two ways.

    python benchmarks/app_latency.py [--model mnist] [--models-dir DIR] [--repeats 5] [--num 16]

1. Directly through the handlers (in this process): click -> first streamed frame, click -> 16
   guided and denoised images, and one likelihood heatmap (the "inspect image" request).
2. Through gradio_client against ``python app.py`` launched on a free port: the same three, as a
   browser would see them: the server's queue, encoding and event stream, plus fetching the
   final picture. (Like a browser, the client does not fetch every streamed frame before reading
   the next message: gradio_client's default of downloading each file in turn would add ~40 ms
   per frame that no browser pays.)

Targets on 2 CPU cores with the bundled MNIST model: first frame <= 0.5 s, 16 images <= 2 s,
heatmap <= 0.3 s. The final frame pacing (TARFLOW_FRAME_INTERVAL, 0.03 s by default, so that the
animation can be followed) is part of the "16 images" time on purpose: it is what users wait for.
A timing benchmark, not a test: it prints numbers and never fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the app and the package live in the root

from app.runtime import configure  # noqa: E402

configure()  # the process settings app.py uses, before torch is imported

TARGETS = {"first frame": 0.5, "16 images": 2.0, "heatmap": 0.3}


def summarise(name: str, times: list[float], target: float | None) -> str:
    med, best = statistics.median(times), min(times)
    verdict = "" if target is None else ("  within target" if med <= target else f"  OVER target {target:g} s")
    return f"  {name:<28} median {med:6.3f} s   best {best:6.3f} s   (n={len(times)}){verdict}"


def generate_args(model: str, num: int, classes: list[str], seed: int) -> list:
    # model, classes, num, seed, guidance, kind, attn_temp, annealed, guide_what, temperature, denoise, sigma, slow
    return [model, classes, num, seed, 2.0, "class", 1.0, False, "ab", 1.0, True, None, False]


def direct(model: str, num: int, repeats: int) -> dict[str, list[float]]:
    from app.models import MODELS
    from app.picker import default_classes
    from app.tabs import generate, invert

    m = MODELS.get(model)
    classes = default_classes(m)
    args = generate_args(model, num, classes, 0)
    args[11] = m.noise_std
    noop = lambda *a, **k: None  # noqa: E731
    list(generate.generate(*args, progress=noop))  # warm-up: first-call allocations
    out: dict[str, list[float]] = {"first frame": [], "16 images": [], "16 images, no pacing": [], "heatmap": [],
                                   "invert": []}
    for r in range(repeats):
        args[3] = r
        t = time.perf_counter()
        stream = generate.generate(*args, progress=noop)
        next(stream)
        out["first frame"].append(time.perf_counter() - t)
        *_, final = stream
        out["16 images"].append(time.perf_counter() - t)
        t = time.perf_counter()
        generate.inspect(final[7], 1 + r % num)
        out["heatmap"].append(time.perf_counter() - t)
        example = ROOT / "assets" / "examples" / "mnist-3.png"
        t = time.perf_counter()
        invert.invert(model, str(example), "auto", "float32", progress=noop)
        out["invert"].append(time.perf_counter() - t)
    interval, generate.FRAME_INTERVAL = generate.FRAME_INTERVAL, 0.0
    for r in range(repeats):
        args[3] = r
        t = time.perf_counter()
        list(generate.generate(*args, progress=noop))
        out["16 images, no pacing"].append(time.perf_counter() - t)
    generate.FRAME_INTERVAL = interval
    return out


def fetch(output) -> int:
    """Download an output picture by its URL, as the page does; returns its size in bytes."""
    url = output["url"] if isinstance(output, dict) else output
    with urllib.request.urlopen(url, timeout=30) as r:
        return len(r.read())


def through_client(model: str, num: int, repeats: int, models_dir: str | None) -> dict[str, list[float]]:
    from app_process import start_app
    from gradio_client import Client, handle_file

    env = {"TARFLOW_MODELS_DIR": models_dir} if models_dir else {}
    t = time.perf_counter()
    server = start_app(env)
    print(f"  (app answered HTTP {time.perf_counter() - t:.1f} s after `python app.py`)")
    try:
        client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)
        info = client.predict(model, api_name="/model_info")
        classes = info[1]["value"] if isinstance(info[1], dict) else info[1]
        sigma = info[5]["value"] if isinstance(info[5], dict) else info[5]
        args = generate_args(model, num, classes, 0)
        args[11] = sigma
        client.predict(*args, api_name="/generate")  # warm-up
        out: dict[str, list[float]] = {"first frame": [], "16 images": [], "heatmap": [], "invert": []}
        for r in range(repeats):
            args[3] = r
            t = time.perf_counter()
            job = client.submit(*args, api_name="/generate")
            first = None
            for _ in job:
                if first is None:
                    first = time.perf_counter() - t
            final = job.result()
            fetch(final[0])
            out["16 images"].append(time.perf_counter() - t)
            out["first frame"].append(first if first is not None else float("nan"))
            t = time.perf_counter()
            _, heat, _ = client.predict(final[7], 1 + r % num, api_name="/inspect")
            fetch(heat)
            out["heatmap"].append(time.perf_counter() - t)
            t = time.perf_counter()
            client.predict(model, handle_file(str(ROOT / "assets" / "examples" / "mnist-3.png")), "auto", "float32",
                           True, api_name="/invert")
            out["invert"].append(time.perf_counter() - t)
        return out
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist", help="model key as the app lists it (default: mnist)")
    parser.add_argument("--models-dir", help="extra models folder (TARFLOW_MODELS_DIR), e.g. before checkpoints exist")
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-client", action="store_true", help="only the direct handler timings")
    args = parser.parse_args()
    if args.models_dir:
        os.environ["TARFLOW_MODELS_DIR"] = args.models_dir

    import torch

    from app.models import resolve

    print(f"model {args.model} ({resolve(args.model).source}), {args.num} images, guidance 2 (class), denoised; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("\n1. Directly through the handlers")
    for name, times in direct(args.model, args.num, args.repeats).items():
        print(summarise(name, times, TARGETS.get(name)))
    if not args.skip_client:
        print("\n2. Through gradio_client against a launched app (python app.py)")
        for name, times in through_client(args.model, args.num, args.repeats, args.models_dir).items():
            print(summarise(name, times, TARGETS.get(name)))


if __name__ == "__main__":
    main()
