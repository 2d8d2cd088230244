"""A model's bits/dim range on its held-out images, stored as heldout.json beside its weights.

    python benchmarks/heldout.py --model checkpoints/mnist            # print the percentiles
    python benchmarks/heldout.py --model checkpoints/mnist --write    # and store heldout.json

The statistic is ``tarflow.heldout.image_bits_per_dim`` (clean 8-bit images at pixel centres, no
label); the app compares an inverted image's value with this range (out-of-distribution note) and a
generated batch's (guidance warning). One forward pass per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from tarflow import data  # noqa: E402
from tarflow.heldout import HeldOutRange, image_bits_per_dim  # noqa: E402
from tarflow.hub import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default=None, help="default: the model's dataset")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--limit", type=int, default=0, help="at most this many held-out images (a seeded subset)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="store heldout.json in the model folder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    dataset = args.dataset or model.dataset
    images, _ = data.load(dataset, args.data_dir).tensors("test")
    if args.limit and args.limit < len(images):
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: args.limit]
        images = images[pick.sort().values]
    start = time.perf_counter()
    values = image_bits_per_dim(model, images)
    seconds = time.perf_counter() - start
    note = (f"all {len(images)} held-out images of {dataset}" if not args.limit or args.limit >= len(values)
            else f"{len(values)} held-out images of {dataset} (seeded subset)")
    result = HeldOutRange.measure(values, dataset, note=note + "; python benchmarks/heldout.py")
    print(json.dumps({**asdict(result), "seconds": round(seconds, 1)}, indent=2))
    if args.write:
        print("wrote", result.save(args.model))


if __name__ == "__main__":
    main()
