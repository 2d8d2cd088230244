"""A model's typical range of bits/dim on its own held-out images, stored beside its weights.

An image scored far outside that range is unlike the data the model learnt (out of distribution),
or, for a sample, the sampler went wrong (too much guidance). ``heldout.json`` in a model folder
holds the measured percentiles; its format, kept small so other tools can read it:

    {"statistic": "...", "dataset": "mnist", "images": 1000,
     "percentiles": {"1": 0.91, "5": ..., "50": ..., "95": ..., "99": ...},
     "mean": ..., "min": ..., "max": ..., "note": "..."}

The statistic is ``image_bits_per_dim``: the 8-bit image at its pixel centres, no class label, no
added noise, with the log2(128) bin width per value included (what the app shows for a clean image).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tarflow.likelihood import bits_per_dim
from tarflow.model import TarFlow

HELDOUT_FILE = "heldout.json"
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
STATISTIC = "bits/dim of the clean 8-bit image at pixel centres, no label, bin width log2(128) included"


def pixel_centres(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> [-1, 1] at the centre of each value's bin, (k + 0.5) / 128 - 1."""
    return (images.double() + 0.5) / 128.0 - 1.0


@torch.no_grad()
def image_bits_per_dim(model: TarFlow, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The statistic for uint8 images (B, C, H, W), one value per image (float64, on the CPU)."""
    param = next(model.parameters())
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = pixel_centres(images[i : i + batch_size]).to(device=param.device, dtype=param.dtype)
        out.append(bits_per_dim(model, x, None).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@dataclass
class HeldOutRange:
    """Percentiles of ``image_bits_per_dim`` over a model's held-out images."""

    dataset: str
    images: int
    percentiles: dict[str, float]
    mean: float
    min: float
    max: float
    statistic: str = STATISTIC
    note: str = ""

    @classmethod
    def measure(cls, values: torch.Tensor, dataset: str, note: str = "") -> HeldOutRange:
        v = values.double().flatten()
        if v.numel() == 0:
            raise ValueError("no values to summarise")
        q = torch.quantile(v, torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64))
        return cls(dataset=dataset, images=int(v.numel()),
                   percentiles={str(p): round(float(x), 4) for p, x in zip(PERCENTILES, q)},
                   mean=round(float(v.mean()), 4), min=round(float(v.min()), 4), max=round(float(v.max()), 4),
                   note=note)

    def pct(self, p: int) -> float:
        return self.percentiles[str(p)]

    def rank(self, bpd: float) -> str:
        """Where ``bpd`` falls, in words: "typical", "unusually low" / "high" (outside the 1-99% band),
        or "far above" (more than the 1-99% width beyond the 99th percentile)."""
        lo, hi = self.pct(1), self.pct(99)
        if bpd > hi + (hi - lo):
            return "far above"
        if bpd > hi:
            return "unusually high"
        if bpd < lo:
            return "unusually low"
        return "typical"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / HELDOUT_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> HeldOutRange | None:
        """The stored range, or None when the folder has none (or it cannot be read)."""
        try:
            raw = json.loads((Path(folder) / HELDOUT_FILE).read_text())
            out = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
            for p in (1, 50, 99):
                float(out.pct(p))
            return out
        except (OSError, ValueError, TypeError, KeyError):
            return None
