"""The published TarFlow configurations on this machine: size, memory and sampling speed.

    python benchmarks/scale.py [--configs afhq imagenet64 ...] [--images 1 4 16] [--tokens 8]
        [--device cpu|cuda] [--plain] [--json benchmarks/results/scale_cpu.json]

Per configuration (tools/reference_configs.py: random weights, published shapes): parameters,
weight memory in fp32 and bf16, the memory sampling needs for 1 / 4 / 16 class-guided images
(weights + one block's key/value cache for both guidance passes + token buffers, computed from the
shapes: at most one block's cache is alive at a time), the milliseconds per token step of the fast
sampler, measured on ONE block of full width over its first ``--tokens`` token steps, and the
whole-sample time estimated from it (steps x blocks; later steps attend over more tokens, so this
is a lower bound, by about 10% at 1024 tokens and width 768). Only one block is built, so the
default run is short even on a CPU. ``--plain`` also times the plain inverse (MetaBlock.reverse,
token by token, as the paper's code) on the same block and tokens, side by side.
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

from tarflow.engine import Inverter  # noqa: E402
from tarflow.model import Architecture, Guidance, MetaBlock  # noqa: E402

WARM_UP = 3  # token steps before timing


def sampling_bytes(arch: Architecture, images: int, guided: bool, bytes_per_value: int = 4) -> int:
    """Weights + one block's key/value cache (every layer, every token, both passes) + the token
    sequence, in bytes."""
    rows = 2 * images if guided else images
    cache = arch.layers_per_block * arch.num_tokens * 2 * rows * arch.channels
    tokens = 2 * images * arch.num_tokens * arch.token_dim
    return (rc.parameter_count(arch) + cache + tokens) * bytes_per_value


def one_block(arch: Architecture, device: torch.device, seed: int = 0) -> MetaBlock:
    torch.manual_seed(seed)
    block = MetaBlock(arch.token_dim, arch.channels, arch.num_tokens, arch.layers_per_block, flip=False,
                      head_dim=arch.head_dim, expansion=arch.expansion, nvp=arch.nvp, num_classes=arch.num_classes)
    with torch.no_grad():
        block.proj_out.weight.normal_(0.0, 1e-3)
    return block.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(block: MetaBlock, images: int, tokens: int, guidance: Guidance, device: torch.device,
               labels: torch.Tensor | None) -> float:
    """Seconds per token step of the fast sampler over the block's first ``tokens`` steps."""
    seq = torch.randn(block.pos_embed.shape[0], images, block.in_dim, device=device)
    inverter = Inverter(images, labels, guidance, device, torch.float32)
    with torch.inference_mode():
        for i in range(WARM_UP):  # setup (weights arranged, cache allocated) and TorchScript's profiling runs
            inverter.advance(block, seq, i, i + 1)
        sync(device)
        start = time.perf_counter()
        inverter.advance(block, seq, WARM_UP, WARM_UP + tokens)
        sync(device)
    return (time.perf_counter() - start) / tokens


def time_plain(block: MetaBlock, images: int, tokens: int, guidance: Guidance, device: torch.device,
               labels: torch.Tensor | None) -> float:
    """Seconds per token step of MetaBlock.reverse on the block's first ``tokens`` steps (it inverts
    as many tokens as z has)."""
    z = torch.randn(images, tokens + 1, block.in_dim, device=device)
    with torch.inference_mode():
        block.reverse(z[:, :WARM_UP], labels, guidance)
        sync(device)
        start = time.perf_counter()
        block.reverse(z, labels, guidance)
        sync(device)
    return (time.perf_counter() - start) / tokens


def bench(key: str, device: torch.device, images: list[int], tokens: int, plain: bool) -> dict:
    config = rc.PUBLISHED[key]
    arch = config.architecture
    guidance = Guidance(1.0) if arch.num_classes else Guidance(1.0, attn_temp=0.5)
    block = one_block(arch, device)
    n = rc.parameter_count(arch)
    row = {"config": config.name, "file": config.file_name(), "device": str(device), "parameters": n,
           "weights_fp32_gb": n * 4 / 1e9, "weights_bf16_gb": n * 2 / 1e9, "tokens_timed": tokens, "by_images": {}}
    steps = (arch.num_tokens - 1) * arch.num_blocks
    for b in images:
        labels = torch.arange(b, device=device) % arch.num_classes if arch.num_classes else None
        per_step = time_steps(block, b, tokens, guidance, device, labels)
        entry = {"memory_gb": sampling_bytes(arch, b, True) / 1e9, "ms_per_step": per_step * 1e3,
                 "whole_sample_s_estimated": per_step * steps}
        if plain:
            plain_step = time_plain(block, b, tokens, guidance, device, labels)
            entry["plain_ms_per_step"] = plain_step * 1e3
            entry["speedup_vs_plain"] = plain_step / per_step
        row["by_images"][b] = entry
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", choices=sorted(rc.PUBLISHED), default=sorted(rc.PUBLISHED))
    p.add_argument("--images", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--tokens", type=int, default=8, help="token steps timed per block")
    p.add_argument("--device", default="cpu")
    p.add_argument("--plain", action="store_true", help="also time MetaBlock.reverse, side by side")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    print(f"device {device}, {torch.get_num_threads()} threads; class-guided (or attention-temperature-guided) "
          f"images; ms per token step over the first {args.tokens} steps of one block; whole sample = "
          "that x steps x blocks (a lower bound); memory from shapes")
    for key in args.configs:
        row = bench(key, device, args.images, args.tokens, args.plain)
        rows.append(row)
        print(f"\n{row['config']} ({row['file']}): {row['parameters'] / 1e6:.0f}M parameters, "
              f"weights {row['weights_fp32_gb']:.2f} GB fp32 / {row['weights_bf16_gb']:.2f} GB bf16")
        for b, e in row["by_images"].items():
            plain = (f", plain {e['plain_ms_per_step']:.1f} ms ({e['speedup_vs_plain']:.2f}x)"
                     if "plain_ms_per_step" in e else "")
            print(f"  {b:3d} images: memory {e['memory_gb']:.2f} GB, {e['ms_per_step']:.1f} ms per step{plain}, "
                  f"whole sample >= {e['whole_sample_s_estimated']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
