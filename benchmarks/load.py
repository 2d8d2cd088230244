"""Load test: bursts of concurrent generate requests through gradio_client.

    python benchmarks/load.py [--model mnist] [--models-dir DIR] [--concurrent 16] [--rounds 3] [--url URL]

Launches ``python app.py`` on a free port (or uses ``--url``), then sends ``--concurrent`` generate
requests at once, ``--rounds`` times. Every request must either finish or be told that the queue
is full; the server must stay up and its memory bounded (resident set size sampled throughout,
printed per round). Prints latencies, rejections and RSS; exits non-zero only if a request failed
in another way or the server died.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the app and the package live in the root


def rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


class Sampler(threading.Thread):
    """Peak RSS of the server while a round runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.05)


def one_request(url: str, args: list) -> tuple[str, float, str]:
    from gradio_client import Client

    t = time.perf_counter()
    try:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        result = client.predict(*args, api_name="/generate")
        ok = isinstance(result, (list, tuple)) and str(result[1]).startswith("**Done**")
        return ("ok" if ok else "bad result"), time.perf_counter() - t, ""
    except Exception as e:  # the outcome is what we measure
        text = str(e)
        kind = "queue full" if "queue is full" in text.lower() else "error"
        return kind, time.perf_counter() - t, f"{type(e).__name__}: {text[:120]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--models-dir", help="extra models folder (TARFLOW_MODELS_DIR)")
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num", type=int, default=16, help="images per request")
    parser.add_argument("--url", help="an app that is already running (then RSS is not measured)")
    args = parser.parse_args()

    server = None
    if args.url:
        url, pid = args.url, None
    else:
        from app_process import start_app

        env = {"TARFLOW_MODELS_DIR": args.models_dir} if args.models_dir else {}
        server = start_app(env)
        url, pid = server.url, server.process.pid
    failures = 0
    try:
        from gradio_client import Client

        info = Client(url, verbose=False, analytics_enabled=False).predict(args.model, api_name="/model_info")
        classes = info[1]["value"] if isinstance(info[1], dict) else info[1]
        sigma = info[5]["value"] if isinstance(info[5], dict) else info[5]
        request = [args.model, classes, args.num, 0, 2.0, "class", 1.0, False, "ab", 1.0, True, sigma, False]
        print(f"{url}  model {args.model}  {args.concurrent} concurrent requests x {args.rounds} rounds, "
              f"{args.num} images each, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        if pid:
            print(f"server RSS before: {rss_mb(pid):.0f} MB")
        for r in range(1, args.rounds + 1):
            sampler = Sampler(pid) if pid else None
            if sampler:
                sampler.start()
            t = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                outcomes = list(pool.map(lambda _: one_request(url, request), range(args.concurrent)))
            wall = time.perf_counter() - t
            if sampler:
                sampler.done.set()
                sampler.join()
            done = sorted(s for kind, s, _ in outcomes if kind == "ok")
            full = [s for kind, s, _ in outcomes if kind == "queue full"]
            other = [(kind, msg) for kind, _, msg in outcomes if kind not in ("ok", "queue full")]
            failures += len(other)
            line = f"round {r}: {len(done)} finished, {len(full)} told the queue is full, {len(other)} other errors"
            line += f" · wall {wall:.1f} s"
            if done:
                line += (f" · latency min {done[0]:.2f} / median {statistics.median(done):.2f} / "
                         f"max {done[-1]:.2f} s")
            if full:
                line += f" · rejections answered in {max(full):.2f} s or less"
            if sampler:
                line += f" · RSS peak {sampler.peak:.0f} MB, after {rss_mb(pid):.0f} MB"
            print(line)
            for kind, msg in other:
                print(f"   {kind}: {msg}")
        ok, secs, msg = one_request(url, request)
        alive = server.alive() if server else True
        print(f"afterwards: server {'up' if alive else 'DOWN'}; a new request: {ok} in {secs:.2f} s {msg}")
        if not alive or ok != "ok":
            failures += 1
    finally:
        if server:
            server.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
