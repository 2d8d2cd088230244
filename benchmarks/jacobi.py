"""Jacobi decoding against sequential decoding, side by side: time, passes per block, difference.

    python benchmarks/jacobi.py [--models checkpoints/mnist checkpoints/emoji] [--num 16] [--repeats 3]
        [--tols 1e-2 1e-3 1e-4] [--windows 0 16] [--json out.json]

For each model, at its recommended sampling settings (class-guided where it has classes), each
setting is timed in turn within one round, for several rounds, and the median kept: the ratios
hold on a shared machine even when absolute times drift. Denoising is off (it is the same for
both). "max diff" is the largest difference of a pixel value ([-1, 1] units) from sequential
decoding of the same noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tarflow.hub import load_model  # noqa: E402
from tarflow.jacobi import Jacobi  # noqa: E402
from tarflow.sampling import SampleSettings, sample  # noqa: E402


def settings_for(model, num: int) -> SampleSettings:
    classes = list(range(model.num_classes)) if model.num_classes else None
    return SampleSettings(num=num, classes=classes, seed=0, denoise=False)


def variants(tols: list[float], windows: list[int]) -> dict[str, Jacobi | None]:
    out: dict[str, Jacobi | None] = {"sequential": None}
    for window in windows:
        for tol in tols:
            out[f"jacobi tol={tol:g} window={window or 'block'}"] = Jacobi(tol=tol, window=window)
        out[f"jacobi tol={tols[len(tols) // 2]:g} window={window or 'block'} first-seq"] = Jacobi(
            tol=tols[len(tols) // 2], window=window, sequential_first=True)
    return out


def run(model, base: SampleSettings, jacobi: Jacobi | None):
    s = base if jacobi is None else SampleSettings(**{**base.__dict__, "decode": "jacobi", "jacobi": jacobi})
    start = time.perf_counter()
    out = sample(model, s)
    return time.perf_counter() - start, out


def bench_model(path: str, num: int, repeats: int, tols: list[float], windows: list[int]) -> dict:
    model = load_model(path)
    base = settings_for(model, num)
    table = variants(tols, windows)
    times: dict[str, list[float]] = {name: [] for name in table}
    results = {}
    for name, jacobi in table.items():  # warm-up (TorchScript compilation, allocator)
        results[name] = run(model, base, jacobi)[1]
    for _ in range(repeats):
        for name, jacobi in table.items():
            times[name].append(run(model, base, jacobi)[0])
    ref = results["sequential"].images
    seq_time = statistics.median(times["sequential"])
    rows = []
    for name in table:
        out = results[name]
        t = statistics.median(times[name])
        passes = None if out.decode is None else {k: out.decode.total(k) for k in sorted(out.decode.passes)}
        rows.append({"setting": name, "seconds": t, "speedup": seq_time / t,
                     "max_diff": float((out.images - ref).abs().max()), "passes": passes,
                     "sequential_blocks": None if out.decode is None else out.decode.sequential})
    return {"model": path, "num": num, "tokens_per_block": model.num_tokens - 1, "blocks": len(model.blocks),
            "threads": torch.get_num_threads(), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["checkpoints/mnist", "checkpoints/emoji"])
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4])
    p.add_argument("--windows", type=int, nargs="+", default=[0, 16])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    reports = []
    for path in args.models:
        r = bench_model(path, args.num, args.repeats, args.tols, args.windows)
        reports.append(r)
        print(f"\n{path}: {args.num} images, {r['blocks']} blocks x {r['tokens_per_block']} token steps, "
              f"{r['threads']} threads (median of {args.repeats})")
        print(f"{'setting':44s} {'s':>7s} {'vs seq':>7s} {'max diff':>9s}  passes per block (index: passes)")
        for row in r["rows"]:
            passes = "" if row["passes"] is None else ", ".join(f"{k}: {v}" for k, v in row["passes"].items())
            if row["sequential_blocks"]:
                passes += f"; sequential: {row['sequential_blocks']}"
            print(f"{row['setting']:44s} {row['seconds']:7.3f} {row['speedup']:6.2f}x {row['max_diff']:9.2e}  {passes}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
