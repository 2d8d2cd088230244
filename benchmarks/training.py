"""Training speed: images/s of our training step against the published code on the same config.

    python benchmarks/training.py [--batch 64] [--steps 15] [--reference PATH/transformer_flow.py]

Both run the same step (forward, the loss, backward, AdamW) on the same random batch, in turns.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tarflow import TarFlow  # noqa: E402


def step_fn(model, x, y):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)

    def step():
        z, _, logdets = model(x, y)
        loss = 0.5 * z.pow(2).mean() - logdets.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--config", default="1,28,4,128,4,4", help="in_channels,img,patch,width,blocks,layers")
    p.add_argument("--reference", default=None)
    args = p.parse_args()
    c, img, patch, width, blocks, layers = map(int, args.config.split(","))
    torch.manual_seed(0)
    ours = TarFlow(c, img, patch, width, blocks, layers, num_classes=10)
    x = torch.rand(args.batch, c, img, img) * 2 - 1
    y = torch.randint(10, (args.batch,))
    runs = [("ours", step_fn(ours, x, y))]
    if args.reference:
        spec = importlib.util.spec_from_file_location("reference_flow", args.reference)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ref = mod.Model(c, img, patch, width, blocks, layers, num_classes=10)
        ref.load_state_dict(ours.state_dict())
        runs.insert(0, ("published", step_fn(ref, x, y)))
    for _, fn in runs:  # warm-up
        fn()
    times = {name: [] for name, _ in runs}
    for _ in range(args.steps):
        for name, fn in runs:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = None
    print(f"config {args.config}, batch {args.batch}, threads {torch.get_num_threads()}")
    for name, ts in times.items():
        t = sorted(ts)[len(ts) // 2]
        base = base or t
        print(f"{name:10s} median step {t * 1e3:7.1f} ms  {args.batch / t:7.1f} images/s  ({base / t:.2f}x)")


if __name__ == "__main__":
    main()
