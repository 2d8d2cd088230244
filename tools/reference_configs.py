"""Reference-format checkpoints of the published TarFlow configurations, with random weights.

    python tools/reference_configs.py --out refs/ [--only afhq imagenet64] [--width 64 --blocks 2 --layers 1]

Each file is a plain state dict in the layout of the reference code (apple/ml-tarflow), saved with
torch.save under the published file naming (``<dataset>_model_<patch>_<width>_<blocks>_<layers>_<noise>.pth``),
so file-name parsing, strict loading, conversion, the CLI and the app's picker can be exercised
without downloading anything. Full size they are large (AFHQ 256: 1.8 GB, ImageNet 128: 3.2 GB);
``--width/--blocks/--layers`` shrink the network (the name follows) while the patch size, image
size, token count, classes and noise level stay the published ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tarflow.model import Architecture, TarFlow  # noqa: E402


@dataclass(frozen=True)
class Published:
    """One published configuration: the file-name prefix, its architecture and training noise."""

    name: str
    dataset: str  # the file name's first field
    architecture: Architecture
    noise: float

    def file_name(self, arch: Architecture | None = None) -> str:
        a = arch or self.architecture
        fields = [a.patch_size, a.channels, a.num_blocks, a.layers_per_block, f"{self.noise:g}"]
        return f"{self.dataset}_model_{'_'.join(map(str, fields))}.pth"

    def shrunk(self, width: int | None = None, blocks: int | None = None, layers: int | None = None) -> Architecture:
        """The same data shape (patch, image, classes) with a smaller network."""
        a = self.architecture
        return dataclasses.replace(a, channels=width or a.channels, num_blocks=blocks or a.num_blocks,
                                   layers_per_block=layers or a.layers_per_block)


PUBLISHED = {
    "afhq": Published("AFHQ 256", "afhq", Architecture(3, 256, 8, 768, 8, 8, num_classes=3), 0.07),
    "imagenet64": Published("ImageNet 64 unconditional", "imagenet64", Architecture(3, 64, 2, 768, 8, 8), 0.05),
    "imagenet64-cond": Published("ImageNet 64 1000 classes", "imagenet",
                                 Architecture(3, 64, 2, 768, 8, 8, num_classes=1000), 0.05),
    "imagenet128": Published("ImageNet 128 1000 classes", "imagenet",
                             Architecture(3, 128, 4, 1024, 8, 8, num_classes=1000), 0.15),
}


def parameter_count(arch: Architecture) -> int:
    """Parameters of a TarFlow of this architecture, from its shapes alone (nothing is built)."""
    w, d, t, hidden = arch.channels, arch.token_dim, arch.num_tokens, arch.channels * arch.expansion
    out = 2 * d if arch.nvp else d
    layer = 2 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (w * hidden + hidden) + (hidden * w + w)
    block = (d * w + w) + t * w + arch.num_classes * w + arch.layers_per_block * layer + (w * out + out)
    return arch.num_blocks * block


def random_model(arch: Architecture, seed: int = 0, out_std: float = 1e-3) -> TarFlow:
    """A TarFlow with the reference's initialisation, except that the output layers get small random
    weights instead of zeros, so that every block changes its input (an all-identity flow would
    hide mistakes in the inverse)."""
    torch.manual_seed(seed)
    model = TarFlow(**dataclasses.asdict(arch))
    with torch.no_grad():
        for block in model.blocks:
            block.proj_out.weight.normal_(0.0, out_std)
    return model


def write(config: Published, out_dir: Path, arch: Architecture | None = None, seed: int = 0) -> Path:
    """Save a random reference-format state dict of ``config`` (or its shrunk ``arch``) in ``out_dir``."""
    arch = arch or config.architecture
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / config.file_name(arch)
    torch.save(random_model(arch, seed).state_dict(), path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="+", choices=sorted(PUBLISHED), default=sorted(PUBLISHED))
    p.add_argument("--width", type=int, default=None, help="network width (default: the published one)")
    p.add_argument("--blocks", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for key in args.only:
        config = PUBLISHED[key]
        arch = config.shrunk(args.width, args.blocks, args.layers)
        n = parameter_count(arch)
        path = write(config, Path(args.out), arch, args.seed)
        print(f"{config.name:28s} {n / 1e6:8.1f}M parameters -> {path}")


if __name__ == "__main__":
    main()
