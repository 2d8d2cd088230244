"""GPU checks and timings (run by benchmarks/gpu_check.sh; needs CUDA).

    python benchmarks/gpu_check.py [--images 16] [--tokens 64] [--out benchmarks/results]

1. Correctness on the GPU: the CUDA-graph inverter (tarflow/cuda_engine.py) against the plain
   inverse (MetaBlock.reverse) on a small random model: float32 within 1e-4, bf16 reported.
2. The ImageNet 64 configuration (random weights, tools/reference_configs.py), ``--images``
   class-guided images, guidance 2.3, one block: ms per token step over its first ``--tokens``
   steps for the plain inverse, the engine (eager), the CUDA-graph inverter in float32 and in
   bf16; the same tokens compared with the plain inverse; Jacobi decoding of the whole block at
   tol 1e-3 (time, passes). Whole-sample times are per-step x 8 blocks x 1023 steps.
Writes gpu_check.json and gpu_check.txt (the machine named) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import reference_configs as rc  # noqa: E402
from scale import one_block  # noqa: E402

from tarflow.cuda_engine import StaticInverter  # noqa: E402
from tarflow.engine import Inverter  # noqa: E402
from tarflow.jacobi import Jacobi, JacobiInverter  # noqa: E402
from tarflow.model import Guidance, TarFlow  # noqa: E402

LINES: list[str] = []


def say(text: str) -> None:
    print(text, flush=True)
    LINES.append(text)


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def check_small(device: torch.device) -> dict:
    torch.manual_seed(0)
    model = TarFlow(3, 16, 2, 128, 2, 2, num_classes=4).to(device)
    for block in model.blocks:
        torch.nn.init.normal_(block.proj_out.weight, std=0.02)
    z = torch.randn(4, model.num_tokens, model.token_dim, device=device)
    y = torch.tensor([0, 1, 2, -1], device=device)
    g = Guidance(2.0)
    out = {}
    for block in model.blocks:
        want = block.reverse(z, y, g)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            inv = StaticInverter(4, y, g, device, dtype, graphs=True)
            seq = block.permute(z, 1).transpose(0, 1).contiguous()
            inv.advance(block, seq, 0, model.num_tokens - 1)
            got = block.permute(seq.transpose(0, 1), 1)
            out.setdefault(name, []).append(float((got - want).abs().max()))
    say(f"small model, CUDA graphs vs MetaBlock.reverse: max diff fp32 {max(out['fp32']):.2e}, "
        f"bf16 {max(out['bf16']):.2e}")
    assert max(out["fp32"]) < 1e-4, out
    return out


def bench_imagenet64(device: torch.device, images: int, tokens: int) -> dict:
    arch = rc.PUBLISHED["imagenet64-cond"].architecture
    block = one_block(arch, device)
    T, D = arch.num_tokens, arch.token_dim
    g = Guidance(2.3)
    y = torch.arange(images, device=device) % arch.num_classes
    z = torch.randn(images, T, D, device=device)
    seq0 = z.transpose(0, 1).contiguous()
    results, outputs = {}, {}
    steps_per_sample = arch.num_blocks * (T - 1)

    def plain():
        outputs["plain"] = block.reverse(z[:, : tokens + 1], y, g)[:, : tokens + 1]

    def engine(kind: str, make):
        def run():
            seq = seq0.clone()
            make().advance(block, seq, 0, tokens)
            outputs[kind] = seq[: tokens + 1].transpose(0, 1)
        return run

    contenders = {
        "plain MetaBlock.reverse": plain,
        "engine (eager)": engine("engine", lambda: Inverter(images, y, g, device, torch.float32)),
        "CUDA graphs fp32": engine("graph32", lambda: StaticInverter(images, y, g, device, torch.float32)),
        "CUDA graphs bf16": engine("graph16", lambda: StaticInverter(images, y, g, device, torch.bfloat16)),
    }
    with torch.inference_mode():
        for name, fn in contenders.items():
            fn()  # warm-up
            seconds = timed(fn) / tokens
            results[name] = {"ms_per_step": seconds * 1e3, "whole_sample_s": seconds * steps_per_sample}
        ref = outputs["plain"]
        for key, name in (("engine", "engine (eager)"), ("graph32", "CUDA graphs fp32"),
                          ("graph16", "CUDA graphs bf16")):
            results[name]["max_diff_vs_plain"] = float((outputs[key] - ref).abs().max())
        base = results["plain MetaBlock.reverse"]["ms_per_step"]
        for name, r in results.items():
            r["speedup_vs_plain"] = base / r["ms_per_step"]
            say(f"  {name:26s} {r['ms_per_step']:8.2f} ms/step  {r['speedup_vs_plain']:6.1f}x  "
                f"whole sample ~{r['whole_sample_s']:7.1f} s  diff {r.get('max_diff_vs_plain', 0):.1e}")
        jac = JacobiInverter(images, y, g, device, torch.float32, Jacobi(tol=1e-3))
        seq = seq0.clone()
        seconds = timed(lambda: jac.advance(block, seq, 0, T - 1, index=0))
        passes = jac.report.total(0)
        seq_block = results["CUDA graphs bf16"]["ms_per_step"] * (T - 1) / 1e3
        results["jacobi tol 1e-3 (whole block)"] = {"block_s": seconds, "passes": passes,
                                                   "vs_graph_bf16_block": seq_block / seconds}
        say(f"  Jacobi tol 1e-3, whole block: {seconds:.2f} s, {passes} passes "
            f"(CUDA graphs bf16 sequential block ~{seq_block:.2f} s)")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs CUDA")
    device = torch.device("cuda")
    machine = torch.cuda.get_device_name(0)
    say(f"machine: {machine}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    report = {"machine": machine, "torch": torch.__version__, "small": check_small(device)}
    say(f"ImageNet 64 configuration, {args.images} class-guided images, guidance 2.3, one block, "
        f"first {args.tokens} token steps:")
    report["imagenet64"] = bench_imagenet64(device, args.images, args.tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.txt").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
