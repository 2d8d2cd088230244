"""Classification by likelihood on held-out images: accuracy, balanced accuracy, calibration.

    python benchmarks/classify.py --model checkpoints/mnist                  # clean images
    python benchmarks/classify.py --model checkpoints/mnist --draws 4        # mean over 4 noisy copies
    python benchmarks/classify.py --model checkpoints/mnist --shifts 1       # mean over it and its 8 one-pixel moves
    python benchmarks/classify.py --model checkpoints/mnist --draws 4 --write   # store calibration.json

Each held-out image is scored under every class, p(y | x) follows by Bayes' rule with a uniform
prior, and one temperature on the log-likelihoods is fitted so the stated confidence matches the
hit rate (the "after" numbers are cross-fitted on two halves). With ``--write`` the result lands
in the model folder as calibration.json, which the app reads to show the measured accuracy and the
calibrated posterior.
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
from tarflow.calibration import calibrate, describe_views, noisy_class_log_likelihoods  # noqa: E402
from tarflow.hub import load_model  # noqa: E402


def held_out(model, dataset: str, data_dir: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out split in [-1, 1]; with ``limit``, a class-balanced subset of at most that many."""
    images, labels = data.load(dataset, data_dir).tensors("test")
    if limit and limit < len(labels):
        g = torch.Generator().manual_seed(0)
        per_class = max(1, limit // model.num_classes)
        keep = [torch.nonzero(labels == k).view(-1) for k in range(model.num_classes)]
        keep = [idx[torch.randperm(len(idx), generator=g)[:per_class]] for idx in keep]
        pick = torch.cat(keep).sort().values
        images, labels = images[pick], labels[pick]
    return images.float() / 127.5 - 1, labels


def scoring_note(model, draws: int, shifts: int) -> str:
    """How each image was scored, for the note stored with the calibration."""
    views = describe_views(model.noise_std, draws, shifts)
    return f", each scored as the mean over {views}" if views else ", clean"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default=None, help="default: the model's dataset")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--draws", type=int, default=0, help="noisy copies per image (0: the clean image)")
    p.add_argument("--shifts", type=int, default=0,
                   help="also score the image moved by up to this many pixels each way and take the mean")
    p.add_argument("--seed", type=int, default=0, help="of the noise draws")
    p.add_argument("--limit", type=int, default=0, help="at most this many held-out images, class-balanced")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="store calibration.json in the model folder")
    p.add_argument("--device", default="cpu", help="where the model scores the images")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device).eval()
    x, y = held_out(model, args.dataset or model.dataset, args.data_dir, args.limit)
    start = time.perf_counter()
    ll = noisy_class_log_likelihoods(model, x.to(args.device), draws=args.draws, seed=args.seed,
                                     shifts=args.shifts).cpu()
    seconds = time.perf_counter() - start
    cal = calibrate(ll, y, noise_draws=args.draws, shifts=args.shifts)
    cal.note = f"{len(y)} held-out images of {args.dataset or model.dataset}" + scoring_note(model, args.draws,
                                                                                           args.shifts)
    print(json.dumps({**asdict(cal), "seconds": round(seconds, 1)}, indent=2))
    if args.write:
        print("wrote", cal.save(args.model))


if __name__ == "__main__":
    main()
