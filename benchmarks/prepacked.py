"""Prepacked weights for the sampler's small matrix products: do they beat plain ``F.linear``?

    python benchmarks/prepacked.py [--threads 2] [--repeat 2000]

A token step multiplies a few rows (images x guidance passes) by each layer's weights: qkv
(W -> 3W), the attention output (W -> W) and the MLP (W -> 4W -> W). MKL's packed GEMM
(``torch.ops.mkl._mkl_linear`` on a weight reordered once by ``_mkl_reorder_linear_weight``) and
oneDNN's prepacked linear (``torch.ops.mkldnn._linear_pointwise`` on ``_reorder_linear_weight``)
both skip the per-call weight packing. This times the three side by side, interleaved in one run,
for the bundled models' widths and the batch sizes the app uses, and prints each one's time as a
ratio to ``F.linear`` (below 1: faster) and its GFLOP/s against a large matmul's on this machine.
The results decide what the engine uses; nothing in ``tarflow/`` depends on this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak(threads: int, n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b, 1) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _time(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def kernels(weight: torch.Tensor, bias: torch.Tensor, rows: int) -> dict:
    mkl = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
    dnn = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    return {
        "F.linear": lambda x: F.linear(x, weight, bias),
        "MKL packed GEMM": lambda x: torch.ops.mkl._mkl_linear(x, mkl, weight, bias, rows),
        "oneDNN prepacked": lambda x: torch.ops.mkldnn._linear_pointwise(x, dnn, bias, "none", [], ""),
    }


def measure(width: int, rows: int, repeat: int, rounds: int = 7) -> list[dict]:
    """Every layer shape of one block at this width, each kernel timed in interleaved rounds."""
    out = []
    for name, (fan_in, fan_out) in {"qkv": (width, 3 * width), "attn out": (width, width),
                                    "mlp up": (width, 4 * width), "mlp down": (4 * width, width)}.items():
        weight, bias, x = torch.randn(fan_out, fan_in), torch.randn(fan_out), torch.randn(rows, fan_in)
        ks = kernels(weight, bias, rows)
        reference = ks["F.linear"](x)
        for label, fn in ks.items():
            err = float((fn(x) - reference).abs().max())
            assert err < 1e-3, f"{label} disagrees with F.linear by {err}"
        times: dict[str, list[float]] = {k: [] for k in ks}
        with torch.inference_mode():
            for _ in range(rounds):
                for label, fn in ks.items():
                    times[label].append(_time(lambda fn=fn, x=x: fn(x), repeat))
        flops = 2 * rows * fan_in * fan_out
        base = statistics.median(times["F.linear"])
        for label, ts in times.items():
            t = statistics.median(ts)
            out.append({"width": width, "rows": rows, "layer": name, "kernel": label, "us": t * 1e6,
                        "ratio": t / base, "gflops": flops / t / 1e9})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2000)
    p.add_argument("--write", action="store_true", help=f"store the table in {RESULTS}/prepacked_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak(args.threads)
    rows = []
    for width in (128, 192):  # mnist / fashion-mnist, emoji
        for batch in (2, 32, 128):  # 1, 16 and 64 images, two guidance passes each
            rows += measure(width, batch, args.repeat if batch < 64 else args.repeat // 4)
    print(f"matmul peak (2048^2 fp32, {args.threads} threads): {peak:.1f} GFLOP/s")
    print(f"{'width':>5} {'rows':>4} {'layer':9} {'kernel':17} {'us':>8} {'ratio':>6} {'GFLOP/s':>8} {'of peak':>7}")
    for r in rows:
        print(f"{r['width']:5d} {r['rows']:4d} {r['layer']:9} {r['kernel']:17} {r['us']:8.2f} {r['ratio']:6.2f} "
              f"{r['gflops']:8.2f} {r['gflops'] / peak:7.1%}")
    for label in ("MKL packed GEMM", "oneDNN prepacked"):
        ratios = [r["ratio"] for r in rows if r["kernel"] == label]
        print(f"{label}: median ratio to F.linear {statistics.median(ratios):.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    if args.write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "prepacked_cpu.json").write_text(json.dumps({"peak_gflops": peak, "threads": args.threads,
                                                                 "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
