"""Command line: python -m tarflow {sample,train,eval,convert,info,prepare-data} ..."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def pick_device(name: str = "auto"):
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cmd_sample(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from tarflow.hub import load_model
    from tarflow.images import grid, save_png
    from tarflow.jacobi import Jacobi
    from tarflow.sampling import Samples, SampleSettings, sample_stream

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise ValueError(f"--out must end in .png or .npz, got {out.name}")
    model = load_model(args.model, device=pick_device(args.device))
    settings = SampleSettings(
        num=args.num, classes=args.classes, seed=args.seed, guidance=args.guidance, guide_what=args.guide_what,
        attn_temp=args.attn_temp, annealed=args.annealed, temperature=args.temperature,
        denoise=not args.no_denoise, sigma=args.sigma, decode=args.decode,
        jacobi=Jacobi(args.jacobi_tol, args.jacobi_window, args.jacobi_max_iters, args.jacobi_sequential_first),
    )
    dtype = torch.bfloat16 if args.bf16 else None
    steps = len(model.blocks) * (model.num_tokens - 1)
    # Jacobi windows never span two progress updates: it reports per block, not per few tokens.
    every = None if args.decode == "jacobi" else max(1, (model.num_tokens - 1) // 8)
    result = None
    with tqdm(total=steps, desc="sampling", unit="tok", disable=args.quiet) as bar:
        done = 0
        for item in sample_stream(model, settings, every=every, dtype=dtype):
            if isinstance(item, Samples):
                result = item
            elif item.block is not None:
                total = (item.stage - 1) * (model.num_tokens - 1) + item.tokens - 1
                bar.update(total - done)
                done = total
    assert result is not None
    if result.decode is not None and not args.quiet:
        print(f"jacobi passes: {result.decode.summary()}")
    images = result.uint8()
    if out.suffix.lower() == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, images=images.numpy(), labels=result.labels.numpy())
    else:
        save_png(grid(images, nrow=args.nrow), out, scale=args.scale)
    print(f"wrote {len(images)} samples to {out}")


def cmd_convert(args: argparse.Namespace) -> None:
    from tarflow.hub import convert

    overrides = {k: v for k, v in [("in_channels", args.in_channels), ("patch_size", args.patch_size),
                                   ("noise_std", args.noise_std)] if v is not None}
    out = convert(args.src, args.out, **overrides)
    print(f"converted {args.src} -> {out}")


def cmd_info(args: argparse.Namespace) -> None:
    from tarflow.hub import load_model

    model = load_model(args.model)
    n = sum(p.numel() for p in model.parameters())
    for k, v in model.config.items():
        print(f"{k:18s} {v}")
    print(f"{'parameters':18s} {n:,}")


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from tarflow.data import prepare

    path = prepare(args.name, out_dir=args.out, source=args.source, image_size=args.size, channels=args.channels)
    print(f"wrote {path}")


def cmd_train(args: argparse.Namespace) -> None:
    from tarflow.train import TrainConfig, train

    overrides = dict(kv.split("=", 1) for kv in args.set)
    parsed = {}
    for k, v in overrides.items():
        try:
            parsed[k] = json.loads(v)
        except json.JSONDecodeError:
            parsed[k] = v
    if args.out:
        parsed["out"] = args.out
    cfg = TrainConfig.from_file(args.config, **parsed) if args.config else TrainConfig.from_dict(parsed)
    target = train(cfg, minutes=args.minutes, stop_after=args.stop_after, max_steps=args.max_steps, quiet=args.quiet)
    print(f"model written to {target}")


def cmd_eval(args: argparse.Namespace) -> None:
    from tarflow.data import load
    from tarflow.hub import load_model
    from tarflow.train import TrainConfig, evaluate

    model = load_model(args.model, device=pick_device(args.device))
    dataset = args.dataset or model.dataset
    if not dataset:
        raise ValueError("this model does not name its dataset; pass --dataset")
    data = load(dataset, args.data_dir)
    images, labels = data.tensors("test")
    images, labels = images[: args.images], labels[: args.images]
    if images.shape[1:] != (model.in_channels, model.img_size, model.img_size):
        raise ValueError(f"{dataset} images are {tuple(images.shape[1:])}, the model wants "
                         f"{(model.in_channels, model.img_size, model.img_size)}")
    noise = "gaussian" if model.noise_std > 0 else "uniform"
    res = evaluate(model, TrainConfig(noise=noise, noise_std=model.noise_std, seed=args.seed), images, labels)
    print(f"{args.model} on {len(images)} held-out {dataset} images:")
    print(f"  bits/dim (8-bit, uniform dequantization): {res['bpd']:.4f}")
    if "noisy_bpd" in res:
        print(f"  bits/dim of the held-out images with the training noise (sigma {model.noise_std}) added, "
              f"the density this model was trained on: {res['noisy_bpd']:.4f}")


def _add_sample_command(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="draw samples to a PNG grid or an .npz")
    s.add_argument("--model", required=True, help="model folder, Hub id, or reference .pth")
    s.add_argument("--class", dest="classes", nargs="+", default=None,
                   help="class names or indices, cycled over the images (default: none)")
    s.add_argument("--num", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's recommended)")
    s.add_argument("--guide-what", default="ab", choices=["ab", "a", "b"])
    s.add_argument("--attn-temp", type=float, default=None, help="attention temperature of the weak guidance pass")
    s.add_argument("--annealed", action="store_true", help="grow the guidance weight over each block")
    s.add_argument("--temperature", type=float, default=None,
                   help="prior temperature (default: the model's recommended, else 1)")
    s.add_argument("--sigma", type=float, default=None, help="denoising noise level (default: training noise)")
    s.add_argument("--no-denoise", action="store_true")
    s.add_argument("--device", default="auto")
    s.add_argument("--bf16", action="store_true", help="sample in bfloat16")
    s.add_argument("--decode", default="sequential", choices=["sequential", "jacobi"],
                   help="token by token, or Jacobi passes over whole windows of tokens")
    s.add_argument("--jacobi-tol", type=float, default=1e-3, help="stop a window when no value changes more")
    s.add_argument("--jacobi-window", type=int, default=0, help="tokens per Jacobi window (0: whole block)")
    s.add_argument("--jacobi-max-iters", type=int, default=0, help="passes per window at most (0: no cap)")
    s.add_argument("--jacobi-sequential-first", action="store_true",
                   help="invert the first sampled block token by token")
    s.add_argument("--nrow", type=int, default=None)
    s.add_argument("--scale", type=int, default=1, help="enlarge the PNG grid by this factor")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="output .png (grid) or .npz (images, labels)")
    s.set_defaults(func=cmd_sample)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tarflow", description="TarFlow: sample, convert, prepare data.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_sample_command(sub)

    c = sub.add_parser("convert", help="reference .pth -> our format (config.json + model.safetensors)")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--in-channels", type=int)
    c.add_argument("--patch-size", type=int)
    c.add_argument("--noise-std", type=float)
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser("train", help="train or resume a model (also under accelerate launch)")
    t.add_argument("--config", help="a JSON config file (see configs/)")
    t.add_argument("--out", help="run folder (default: the config's)")
    t.add_argument("--minutes", type=float, help="fit the schedule to this budget when total_steps is unset")
    t.add_argument("--stop-after", type=float, help="checkpoint and stop after this many minutes; rerun to resume")
    t.add_argument("--max-steps", type=int, help="stop at this global step")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config entries")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="held-out bits/dim of a model")
    e.add_argument("--model", required=True)
    e.add_argument("--dataset", help="default: the model's own")
    e.add_argument("--data-dir", default="data")
    e.add_argument("--images", type=int, default=10000, help="at most this many held-out images")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="print a model's configuration")
    i.add_argument("model")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("prepare-data", help="build the cached array file of a dataset")
    d.add_argument("name", help="mnist, fashion-mnist, emoji, emoji2, or a folder with one sub-folder per class")
    d.add_argument("--out", default="data")
    d.add_argument("--source", default=None, help="where the raw source lies (default: the usual places)")
    d.add_argument("--size", type=int, default=None, help="image size (default: 32 for folders, native otherwise)")
    d.add_argument("--channels", type=int, default=None, choices=[1, 3])
    d.set_defaults(func=cmd_prepare_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tarflow.data import DataSourceError
    from tarflow.hub import ModelLoadError

    expected = (ModelLoadError, DataSourceError, ValueError, FileNotFoundError, FloatingPointError)
    try:
        args.func(args)
    except expected as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
