"""Turn a finished training run into a bundled checkpoint with a model card.

    python tools/bundle.py mnist --run runs/mnist --command "python -m tarflow train --config configs/mnist.json ..."

Copies the run's exported (EMA) model to checkpoints/<name>/, measures held-out bits/dim,
sample quality (benchmarks/quality.py's judge) and classification by likelihood on every held-out
image (written as calibration.json, as benchmarks/classify.py --write does), draws sample grids
with and without denoising, and writes README.md with the numbers, the training command, time
and hardware. Afterwards refresh the model's other measured files:
``python benchmarks/heldout.py --write`` and ``python benchmarks/ood.py --write``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import quality  # noqa: E402
from classify import scoring_note  # noqa: E402

from tarflow.calibration import (  # noqa: E402
    accuracy,
    balanced_accuracy,
    calibrate,
    noise_copies,
    noisy_class_log_likelihoods,
    views_per_image,
)
from tarflow.data import DATASETS, load, split_name  # noqa: E402
from tarflow.hub import load_model  # noqa: E402
from tarflow.images import grid, save_png  # noqa: E402
from tarflow.likelihood import class_log_likelihoods, noise_bits  # noqa: E402
from tarflow.sampling import SampleSettings, sample  # noqa: E402
from tarflow.train import TrainConfig, evaluate  # noqa: E402

# Hub licence tags for the bundled data (MNIST: CC BY-SA 3.0; Fashion-MNIST: MIT; Noto emoji: Apache-2.0;
# emoji2: Noto Apache-2.0 and Twemoji CC-BY 4.0, named in the card's data section).
CARD_LICENCE = {"mnist": "cc-by-sa-3.0", "fashion-mnist": "mit", "emoji": "apache-2.0", "emoji2": "other"}
CARD_LICENCE_NAME = {"emoji2": "apache-2.0-and-cc-by-4.0"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def training_stats(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_bpd" in r]
    # "minutes" restarts in every process of a resumed run: add up the segments
    ends = [r for r, nxt in zip(train, train[1:] + [None]) if nxt is None or nxt["minutes"] < r["minutes"]]
    minutes = sum(r["minutes"] for r in ends)
    return {"steps": train[-1]["step"], "minutes": minutes, "final_loss": train[-1]["loss"],
            "images_per_s": sorted(r["images_per_s"] for r in train)[len(train) // 2],
            "last_eval": evals[-1] if evals else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("name")
    p.add_argument("--run", required=True)
    p.add_argument("--command", required=True, help="the exact training command(s), for the card")
    p.add_argument("--hardware", default=None, help="default: this machine's CPU and thread count")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--skip-raw", action="store_true",
                   help="judge only the denoised samples (half the sampling time; the raw row says so)")
    p.add_argument("--shifts", type=int, default=0,
                   help="classify by the mean log-likelihood over each image and its moves by up to this many "
                        "pixels (benchmarks/classify.py --shifts); the card also gives the image-alone accuracy")
    p.add_argument("--draws", type=int, default=0,
                   help="classify by the mean log-likelihood over this many copies with the training noise added "
                        "(benchmarks/classify.py --draws); the card also gives the clean-image accuracy")
    p.add_argument("--half", action="store_true",
                   help="store the weights in float16 (half the size; loaded and run in float32)")
    args = p.parse_args()

    run, out = Path(args.run), ROOT / "checkpoints" / args.name
    out.mkdir(parents=True, exist_ok=True)
    for f in ["config.json", "model.safetensors"]:
        shutil.copy(run / "model" / f, out / f)
    if args.half:  # every number below is measured on the weights as shipped
        from safetensors.torch import load_file, save_file

        weights = load_file(out / "model.safetensors")
        save_file({k: v.half().contiguous() for k, v in weights.items()}, out / "model.safetensors")
    model = load_model(out)
    state = torch.load(run / "checkpoint" / "train_state.pt", map_location="cpu", weights_only=True)
    cfg = TrainConfig.from_checkpoint(state["config"])
    data = load(model.dataset, args.data_dir)
    test_x, test_y = data.tensors("test")
    bpd = evaluate(model, cfg, test_x, test_y)

    judge = quality.load_judge(model.dataset, args.data_dir)
    xt = quality.to_float(test_x)
    f_test = quality.features(judge, xt)
    n = args.per_class * model.num_classes
    classes = [c for c in range(model.num_classes) for _ in range(args.per_class)]
    result = {}
    result[False] = (float("nan"), float("nan"))  # replaced below unless --skip-raw
    for denoise in (True,) if args.skip_raw else (True, False):
        s = sample(model, SampleSettings(num=n, classes=classes, seed=0, denoise=denoise))
        result[denoise] = (quality.accuracy(judge, s.images.clamp(-1, 1), s.labels),
                           quality.frechet(quality.features(judge, s.images.clamp(-1, 1)), f_test))
    real_x, real_y = data.tensors("train")
    pick = torch.randperm(len(real_y), generator=torch.Generator().manual_seed(1))[:n]  # the data's class mix
    real = quality.to_float(real_x[pick])
    fair = quality.balanced_pick(real_y, args.per_class)  # the samples' class mix
    balanced_acc = quality.accuracy(judge, quality.to_float(real_x[fair]), real_y[fair])
    yard = {"real": (quality.accuracy(judge, real, real_y[pick]),
                     quality.frechet(quality.features(judge, real), f_test)),
            "blur": (quality.accuracy(judge, quality.blur3(real), real_y[pick]),
                     quality.frechet(quality.features(judge, quality.blur3(real)), f_test))}

    views = views_per_image(noise_copies(model.noise_std, args.draws), args.shifts)  # scores per image and class
    with torch.no_grad():  # every class of every held-out image: no graph kept (it would hold GBs)
        ll = noisy_class_log_likelihoods(model, test_x.float() / 127.5 - 1, draws=args.draws, shifts=args.shifts)
        single = class_log_likelihoods(model, test_x.float() / 127.5 - 1) if views > 1 else ll
    cal = calibrate(ll, test_y, noise_draws=args.draws, shifts=args.shifts)
    cal.note = f"{len(test_y)} held-out images of {model.dataset}" + scoring_note(model, args.draws, args.shifts)
    cal.save(out)
    single_view = (accuracy(single, test_y), balanced_accuracy(single, test_y))

    per_row = 10
    grid_classes = [c for c in range(model.num_classes) for _ in range(per_row)]
    g = sample(model, SampleSettings(num=len(grid_classes), classes=grid_classes, seed=7))
    save_png(grid(g.uint8("images"), nrow=per_row), out / "samples.png", scale=3)
    save_png(grid(g.uint8("raw"), nrow=per_row), out / "samples_raw.png", scale=3)

    stats = training_stats(run)
    spec = DATASETS.get(split_name(model.dataset)[0])
    params = sum(x.numel() for x in model.parameters())
    hardware = args.hardware or f"{cpu_name()}, {torch.get_num_threads()}-thread torch, no GPU"
    guidance = model.sampling.get("guidance", 0.0)
    temperature = float(model.sampling.get("temperature", 1.0))
    at = f"guidance {guidance}" + (f" and prior temperature {temperature:g}" if temperature != 1 else "")
    n_train = len(data.split("train"))
    passes = stats["steps"] * cfg.batch_size / n_train
    noisy_bpd = bpd.get("noisy_bpd", float("nan"))
    noise_floor = noise_bits(model.noise_std)
    judge_meta = json.loads((quality.CLASSIFIERS / f"{model.dataset}.json").read_text())
    judge_acc = judge_meta["held_out_accuracy"]
    judge_bal = ""
    if "held_out_mean_class_accuracy" in judge_meta:  # images it never saw, every class counted alike
        judge_bal = (f" (it has seen those in training); on held-out images its mean per-class accuracy is "
                     f"{judge_meta['held_out_mean_class_accuracy']:.1%}, the fairer ceiling for the samples' score")
    base = split_name(model.dataset)[0]
    licence_name = f"\nlicense_name: {CARD_LICENCE_NAME[base]}" if base in CARD_LICENCE_NAME else ""
    origin = (f"started from the weights of `{cfg.init}` (the earlier bundled model; its training is in git "
              f"history) and trained further" if cfg.init else "trained from scratch")
    objective = ("" if not cfg.hybrid else
                 f"\nObjective: the negative log-likelihood plus {cfg.hybrid:g} x the cross-entropy of Bayes' rule "
                 f"on {cfg.hybrid_batch} clean training images per step, each scored under every class, classes "
                 "weighted by the inverse of their share (`hybrid` in `tarflow/train.py`): it rewards the true "
                 "class's likelihood against the others', the quantity the likelihood classifier reads."
                 + (f" Those images are moved by up to {cfg.hybrid_shift} pixel{'s' if cfg.hybrid_shift > 1 else ''} "
                    "each way (edges repeated; `hybrid_shift`)." if cfg.hybrid_shift else ""))
    pixels = "s" if cfg.shift > 1 else ""
    augment = " ".join(filter(None, [
        f"Each training image is moved by up to {cfg.shift} pixel{pixels} each way (edges repeated; `shift`)."
        if cfg.shift else "",
        "Half the training images are mirrored left-right (`hflip`)"
        + (f", except those of {', '.join(cfg.no_flip)} (`no_flip`: text, arrows and flags must not be mirrored)."
           if cfg.no_flip else ".") if cfg.hflip else ""]))
    objective += f"\nAugmentation: {augment}" if augment else ""
    single_row = (f"\n| the clean image alone: accuracy / balanced | {single_view[0]:.1%} / "
                  f"{single_view[1]:.1%} |") if views > 1 else ""
    shift_arg = (f" --draws {args.draws}" if args.draws else "") + (f" --shifts {args.shifts}" if args.shifts else "")
    raw_row = ("not measured | (bundled with --skip-raw)" if args.skip_raw
               else f"{result[False][0]:.1%} | {result[False][1]:.2f}")
    card = f"""---
library_name: tarflow
license: {CARD_LICENCE.get(base, "other")}{licence_name}
tags: [normalizing-flow, tarflow, image-generation]
datasets: [{base}]
---

# TarFlow · {args.name}

A class-conditional TarFlow {origin} on {model.dataset} ({data.image_size}x{data.image_size},
{data.channels} channel{"s" if data.channels > 1 else ""}, {model.num_classes} classes: {", ".join(model.class_names)}).

![samples, one row per class, denoised](samples.png)

Same noise and classes without the denoising step (raw flow samples, still carrying the training noise):

![samples, one row per class, raw](samples_raw.png)

## Data and licence
{spec.description if spec else model.dataset}. Licence: {spec.licence if spec else "see the data source"}.
Held-out split: {spec.split if spec else data.meta.get("split", "")}.

## Model
patch {model.patch_size} ({model.num_tokens} tokens of {model.token_dim} values), width {model.channels},
{model.num_blocks} flow blocks x {model.layers_per_block} layers, head size {model.head_dim},
{"affine" if model.nvp else "volume-preserving"}, {params / 1e6:.2f} M parameters, trained with Gaussian
noise sigma = {model.noise_std}. Weights are the EMA (decay {cfg.ema_decay}, warmed up) of the training run{
 ", stored in float16 to halve the download and loaded as float32; all numbers here are for the stored weights"
 if args.half else ""}.
Recommended sampling: guidance {guidance} on a and b (class vs. no-class){
 f", prior temperature {temperature:g} (z ~ N(0, {temperature:g}^2 I))" if temperature != 1 else ""}, denoising on.

## Training
```
{args.command}
```
{stats["steps"]} steps of batch {cfg.batch_size} ({passes:.0f} passes over {n_train} training images),
AdamW (betas {tuple(cfg.betas)}, weight decay {cfg.weight_decay}),
learning rate {cfg.lr} with {cfg.warmup_steps} warm-up steps and a cosine decay, label dropping {cfg.drop_label},
gradient clipping {cfg.grad_clip}. {stats["minutes"]:.0f} minutes on {hardware}; median
{stats["images_per_s"]:.0f} training images/s (other work shared the machine).{objective}

## Results (held-out images)
| measure | value |
| --- | --- |
| bits/dim, uniformly dequantized clean images | {bpd["bpd"]:.3f} |
| bits/dim of the noisy images (sigma {model.noise_std}), the density the model was trained on | {noisy_bpd:.3f} |
| for scale: the entropy of the added Gaussian noise alone | {noise_floor:.3f} |

The model was trained on images with noise added, so its density lives around noisy images: clean
images sit off that shell and score poorly, and most of the noisy-image figure is the entropy of the
noise itself. Train with `"noise": "uniform"` for a bits/dim model.

Sample quality, judged by a small CNN trained only on the training split
(`benchmarks/quality.py`, held-out accuracy {judge_acc:.1%}),
{n} samples ({args.per_class} per class) at {at}:

| images | class-consistent | Frechet distance (judge features) |
| --- | --- | --- |
| samples, denoised | {result[True][0]:.1%} | {result[True][1]:.2f} |
| samples, raw | {raw_row} |
| real training images (yardstick) | {yard["real"][0]:.1%} | {yard["real"][1]:.2f} |
| real images, 3x3 blur (yardstick) | {yard["blur"][0]:.1%} | {yard["blur"][1]:.2f} |

The real rows follow the data's class mix, like the held-out images; the samples have
{args.per_class} per class. On class-balanced real training images ({args.per_class} per class, or all of a
smaller class) the judge is right {balanced_acc:.1%} of the time{judge_bal}.

Classification by likelihood (Bayes' rule, uniform prior, every class scored) on all {cal.images} held-out
images{scoring_note(model, args.draws, args.shifts)}:

| measure | value |
| --- | --- |
| accuracy | {cal.accuracy:.1%} |
| balanced accuracy (mean over classes) | {cal.balanced_accuracy:.1%} |{single_row}
| expected calibration error, raw posterior | {cal.ece_before:.3f} (mean confidence {cal.mean_confidence_before:.2f}) |
| after one fitted temperature ({cal.temperature:.3g}, cross-fitted) | {cal.ece_after:.3f} (mean confidence {
    cal.mean_confidence_after:.2f}) |

The app shows the calibrated posterior and these measured accuracies (`calibration.json`); the margins in
bits between classes are the honest quantity.

Reproduce: `python benchmarks/classify.py --model checkpoints/{args.name}{shift_arg}`,
`python benchmarks/quality.py --model checkpoints/{args.name}{
 f" --per-class {args.per_class}" if args.per_class != 100 else ""}` and
`python -m tarflow eval --model checkpoints/{args.name}`.
"""
    (out / "README.md").write_text(card)
    summary = {"classification": cal.__dict__, "balanced_real": balanced_acc, "bpd": bpd, "denoised": result[True],
               "raw": result[False],
               **yard, "stats": stats}
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
