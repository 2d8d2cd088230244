"""Inpainting and repair with the exact score, measured on held-out images.

    OMP_NUM_THREADS=1 python benchmarks/inpainting.py --model checkpoints/mnist [--images 100] [--mask bottom]

The bottom half (or another preset mask) of held-out images is erased and refilled, conditioned on
the true class, by: two baselines (the class's mean training image; uniform noise), annealed
Langevin on log p(x | y) from noise, one model sample of the class pasted in, the best of 8 model
samples picked by the exact likelihood of the composite, and that best sample refined by Langevin
(what the app does). For each: the share
the judge of benchmarks/quality.py assigns to the true class, the mean squared error against the
erased truth (pixels in [0, 1], erased pixels only) and the composite's bits/dim. Then repair:
PSNR against the clean image before and after climbing from noised and from blurred copies.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import balanced_pick, load_judge, predict  # noqa: E402

from tarflow import inpaint  # noqa: E402
from tarflow.data import load  # noqa: E402
from tarflow.hub import load_model  # noqa: E402
from tarflow.likelihood import noisy_bits_per_dim  # noqa: E402
from tarflow.ood import to_unit  # noqa: E402


def quantised(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit levels an app user gets back, as pixel centres in [-1, 1]."""
    return to_unit(((x.clamp(-1, 1) + 1) * 128 - 0.5).round().clamp(0, 255))


def report(name: str, out: torch.Tensor, truth: torch.Tensor, erased: torch.Tensor, y: torch.Tensor,
           judge, model, seconds: float) -> None:
    q = quantised(out).float()
    hit = (predict(judge, q) == y).float().mean().item()
    mse = (((q - truth) / 2) ** 2)[erased.expand_as(truth)].mean().item()
    with torch.no_grad():
        bpd = noisy_bits_per_dim(model, q, y).mean().item()
    print(f"{name:44s} {hit:8.1%} {mse:8.4f} {bpd:9.3f} {seconds:7.0f}", flush=True)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (((quantised(a) - b) / 2) ** 2).mean().item()
    return 10 * torch.log10(torch.tensor(1 / mse)).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="checkpoints/mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--images", type=int, default=100, help="held-out images, balanced over classes")
    p.add_argument("--mask", default="bottom", choices=inpaint.MASKS)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--skip-repair", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    model.requires_grad_(False)
    data = load(model.dataset, args.data_dir)
    images, labels = data.tensors("test")
    pick = balanced_pick(labels, max(1, args.images // data.num_classes), seed=0)[: args.images]
    x, y = to_unit(images[pick]).float(), labels[pick]
    train_x, train_y = data.tensors("train")
    means = torch.stack([to_unit(train_x[train_y == c]).float().mean(0) for c in range(data.num_classes)])
    erased = inpaint.preset_mask(args.mask, model.img_size)[None, None]
    judge = load_judge(model.dataset, args.data_dir)
    g = torch.Generator().manual_seed(0)

    print(f"{args.model}: {len(y)} held-out images, {args.mask} erased, conditioned on the true class")
    print(f"{'fill':44s} {'judge':>8s} {'MSE':>8s} {'bits/dim':>9s} {'seconds':>7s}")
    report("the erased truth (for scale)", x, x, erased, y, judge, model, 0)
    report("class mean image (baseline)", torch.where(erased, means[y], x), x, erased, y, judge, model, 0)
    noise = torch.rand(x.shape, generator=g) * 2 - 1
    report("uniform noise (baseline)", torch.where(erased, noise, x), x, erased, y, judge, model, 0)
    t = time.time()
    out = inpaint.climb_to_end(model, x, erased, y, inpaint.FROM_NOISE)
    report(f"annealed Langevin from noise, {inpaint.FROM_NOISE.steps} steps", out, x, erased, y, judge, model,
           time.time() - t)
    t = time.time()
    one = inpaint.best_of_samples(model, x, erased, y, 1, seed=1)
    report("one sample of the class, pasted in", torch.where(erased, one, x), x, erased, y, judge, model,
           time.time() - t)
    t = time.time()
    best = inpaint.best_of_samples(model, x, erased, y, args.candidates)
    picked = time.time() - t
    report(f"best of {args.candidates} samples by log p", torch.where(erased, best, x), x, erased, y, judge, model,
           picked)
    t = time.time()
    out = inpaint.climb_to_end(model, x, erased, y, inpaint.Climb(), start=best)
    report(f"best of {args.candidates} + Langevin, {inpaint.Climb().steps} steps (the app)", out, x, erased, y,
           judge, model, picked + time.time() - t)

    if args.skip_repair:
        return
    print(f"\nrepair: {inpaint.REPAIR.steps} ascent steps from a damaged image, class given")
    print(f"{'damage':20s} {'PSNR before':>12s} {'PSNR after':>11s} {'judge before':>13s} {'judge after':>12s}")
    free = torch.ones(1, 1, model.img_size, model.img_size, dtype=torch.bool)
    for kind, strength in (("noise", 0.4), ("blur", 1.0)):
        damaged = inpaint.corrupt(x, kind, strength)
        fixed = inpaint.climb_to_end(model, damaged, free, y, inpaint.REPAIR, start=damaged)
        before = (predict(judge, quantised(damaged).float()) == y).float().mean().item()
        after = (predict(judge, quantised(fixed).float()) == y).float().mean().item()
        print(f"{kind + ' ' + str(strength):20s} {psnr(damaged, x):12.2f} {psnr(fixed, x):11.2f} "
              f"{before:13.1%} {after:12.1%}", flush=True)


if __name__ == "__main__":
    main()
