"""Mix two models of the same architecture in weight space: (1 - alpha) * A + alpha * B.

    python tools/mix_weights.py checkpoints/old checkpoints/new --alpha 0.7 --out runs/mix

Meant for a fine-tuned model B and the model A it started from (or an ancestor): the two sit in one
basin, and a point between them can keep most of what the fine-tune gained while losing less of
what it cost (Wortsman et al., "Robust fine-tuning of zero-shot models", 2022, call it WiSE-FT).
The output folder gets B's config.json and the mixed weights in float32; measure it like any model
(benchmarks/quality.py, benchmarks/classify.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tarflow.model import Architecture  # noqa: E402

# The keys of config.json that describe the network: the two models must agree on all of them.
ARCHITECTURE = [f.name for f in dataclasses.fields(Architecture)]


def mix(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * a + alpha * b for floating tensors, computed in float32; other tensors must match."""
    if a.keys() != b.keys():
        raise ValueError(f"the models have different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    out = {}
    for key in a:
        if a[key].shape != b[key].shape:
            raise ValueError(f"{key}: shape {tuple(a[key].shape)} against {tuple(b[key].shape)}")
        if a[key].is_floating_point():
            out[key] = torch.lerp(a[key].float(), b[key].float(), alpha)
        elif torch.equal(a[key], b[key]):
            out[key] = b[key].clone()
        else:
            raise ValueError(f"{key}: integer tensors differ and cannot be mixed")
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="model folder (config.json + model.safetensors): alpha = 0")
    p.add_argument("b", help="model folder: alpha = 1; its config.json is copied")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    a_dir, b_dir, out = Path(args.a), Path(args.b), Path(args.out)
    cfg_a = json.loads((a_dir / "config.json").read_text())
    cfg_b = json.loads((b_dir / "config.json").read_text())
    differ = [k for k in ARCHITECTURE if cfg_a.get(k) != cfg_b.get(k)]
    if differ:
        raise SystemExit(f"the two models differ in {', '.join(differ)}: nothing to interpolate")
    mixed = mix(load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors"), args.alpha)
    out.mkdir(parents=True, exist_ok=True)
    save_file(mixed, out / "model.safetensors")
    shutil.copy(b_dir / "config.json", out / "config.json")
    print(f"{out}: {1 - args.alpha:g} x {a_dir} + {args.alpha:g} x {b_dir}")
    return out


if __name__ == "__main__":
    main()
