"""Sampling speed: our sampler against the model's plain inverse (TarFlow.reverse), side by side.

    python benchmarks/sampling.py [--num 16] [--guidance 2] [--repeats 5] [--device cpu] [--reference PATH]

Prints best-of-N times, the speed-up, the largest difference between the two (they must agree),
achieved GFLOP/s against a matmul peak measured on the same machine in the same run, and the
cost of streaming frames. ``--reference`` may point to a checkout's transformer_flow.py of the
published code to time its reverse() too (nothing of it is kept here).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the package lives in the repository root

from tarflow import TarFlow, engine  # noqa: E402
from tarflow.sampling import Guidance, reverse, reverse_stream  # noqa: E402

PLAIN = "plain TarFlow.reverse"


def best_time(fn, repeats: int, sync=lambda: None) -> float:
    return best_times([fn], repeats, sync)[0]


def best_times(fns, repeats: int, sync=lambda: None) -> list[float]:
    """Best-of-N wall time of each function, run in turns so that machine noise hits all alike."""
    for fn in fns:  # warm-up
        fn()
    sync()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
    return [min(ts) for ts in times]


def matmul_peak(device: torch.device, dtype: torch.dtype, sync) -> float:
    """GFLOP/s of a large square matmul: the practical ceiling on this machine."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = best_time(lambda: a @ b, 3, sync)
    return 2 * n**3 / t / 1e9


def variant(fn, **settings):
    """fn run with some of tarflow.engine's switches changed (USE_SCRIPTED_LOOP, CPU_SHARDS)."""
    def run():
        saved = {k: getattr(engine, k) for k in settings}
        for k, v in settings.items():
            setattr(engine, k, v)
        try:
            return fn()
        finally:
            for k, v in saved.items():
                setattr(engine, k, v)
    return run


def sampling_flops(model: TarFlow, rows: int) -> float:
    """FLOPs of one full reverse pass over ``rows`` sequences (linear layers + attention)."""
    W, T, D = model.channels, model.num_tokens, model.token_dim
    hidden = model.expansion * W
    steps = T - 1
    linear = model.layers_per_block * (4 * W * W + 2 * W * hidden) + D * W + W * model.blocks[0].proj_out.out_features
    attention = model.layers_per_block * 2 * W * (steps + 1) / 2  # q.k and p.v over the average cache length
    return 2.0 * rows * len(model.blocks) * steps * (linear + attention)


def benchmark_model(device: torch.device) -> TarFlow:
    """The MNIST toy configuration of the paper's code: 28x28x1, patch 4, width 128, 4 blocks x 4
    layers, with random weights that keep samples finite under guidance."""
    torch.manual_seed(0)
    model = TarFlow(1, 28, 4, 128, 4, 4, num_classes=10)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if not name.endswith("norm.weight"):
                prm.normal_(0, 0.01 if "proj_out" in name else 0.05)
    return model.to(device).eval()


def published_reverse(path: str, model: TarFlow, z, y, guidance: float):
    """The published reverse() of transformer_flow.py at ``path``, on our model's weights."""
    spec = importlib.util.spec_from_file_location("reference_flow", path)
    ref_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref_mod)
    ref = ref_mod.Model(1, 28, 4, 128, 4, 4, num_classes=10).to(z.device)
    ref.load_state_dict(model.state_dict())

    @torch.no_grad()
    def published():
        return ref.reverse(z.clone(), y, guidance=guidance)

    return published


def print_table(rows_out: list[tuple[str, float]], flops: float, peak: float) -> None:
    t_plain = dict(rows_out)[PLAIN]
    print(f"{'sampler':36s} {'time':>9s} {'speed-up':>9s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name, t in rows_out:
        gf = flops / t / 1e9
        print(f"{name:36s} {t * 1e3:7.1f}ms {t_plain / t:8.2f}x {gf:8.1f} {gf / peak:7.1%}")
    print(f"matmul peak (2048^2 fp32): {peak:.1f} GFLOP/s; work per call {flops / 1e9:.2f} GFLOP")


def streaming_and_bf16(model: TarFlow, z, y, g: Guidance, repeats: int, sync) -> None:
    """The cost of streaming frames, and of sampling in bfloat16, against plain fp32 sampling."""
    def stream(every):
        for _ in reverse_stream(model, z, y, g, every=every):
            pass

    t_plain, t_blocks, t_tokens = best_times([lambda: reverse(model, z, y, g), lambda: stream(None), lambda: stream(6)],
                                             repeats, sync)
    print(f"streaming: per block {t_blocks / t_plain:.3f}x, every 6 tokens {t_tokens / t_plain:.3f}x "
          f"the time of plain sampling ({t_plain * 1e3:.1f}ms)")
    try:
        t_bf16 = best_time(lambda: reverse(model, z, y, g, dtype=torch.bfloat16), repeats, sync)
        err = (reverse(model, z, y, g, dtype=torch.bfloat16) - reverse(model, z, y, g)).abs().max().item()
        print(f"bf16: {t_bf16 * 1e3:.1f}ms ({t_plain / t_bf16:.2f}x fp32), max |bf16 - fp32| = {err:.3f}")
    except RuntimeError as e:
        print(f"bf16 not available here: {e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reference", default=None, help="path to the published transformer_flow.py (optional)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = benchmark_model(device)
    z = torch.randn(args.num, model.num_tokens, model.token_dim, device=device)
    y = torch.arange(args.num, device=device) % 10
    g = Guidance(args.guidance)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.num} samples, guidance {args.guidance}, "
          f"model {sum(x.numel() for x in model.parameters()) / 1e6:.1f}M params, {model.num_tokens} tokens")

    def ours_reverse():
        return reverse(model, z, y, g)

    def plain_reverse():
        return model.reverse(z, y, guidance=args.guidance)

    ours = ours_reverse()
    print(f"max |ours - TarFlow.reverse| = {(ours - plain_reverse()).abs().max().item():.2e}")
    contenders = [(PLAIN, plain_reverse),
                  ("ours, steps as plain PyTorch", variant(ours_reverse, USE_SCRIPTED_LOOP=False)),
                  ("ours, TorchScript steps, one batch", variant(ours_reverse, CPU_SHARDS=1)),
                  ("ours", ours_reverse)]
    if device.type != "cpu":  # the scripted loop and its shards are for CPUs
        del contenders[1:3]
    if args.reference:
        published = published_reverse(args.reference, model, z, y, args.guidance)
        print(f"max |ours - published| = {(published() - ours).abs().max().item():.2e}, "
              f"max |TarFlow.reverse - published| = {(published() - plain_reverse()).abs().max().item():.2e}")
        contenders.insert(0, ("published reverse()", published))
    how = "compiled by TorchScript" if engine.runs_scripted(device, torch.float32) else "as plain PyTorch"
    print(f"ours: token steps {how}, {len(engine.shard_rows(args.num, device, torch.float32))} shard(s) of the "
          "batch run at once")
    times = best_times([fn for _, fn in contenders], args.repeats, sync)
    rows = args.num * (2 if g.active else 1)
    print_table([(name, t) for (name, _), t in zip(contenders, times)], sampling_flops(model, rows),
                matmul_peak(device, torch.float32, sync))
    streaming_and_bf16(model, z, y, g, args.repeats, sync)


if __name__ == "__main__":
    main()
