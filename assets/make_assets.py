"""Make the app's static assets: example images and the architecture figure.

    python assets/make_assets.py examples   # needs the prepared caches in data/ (python -m tarflow data ...)
    python assets/make_assets.py figure     # needs only assets/examples/
    python assets/make_assets.py all

Examples are the first held-out (test split) image of a few chosen classes, saved at native size as
PNG, so the app never needs the datasets at run time.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples"
FIGURE = ROOT / "assets" / "architecture.png"

# dataset -> (file prefix, class indices to take one test image of)
PICKS = {
    "mnist": ("mnist", [3, 7, 2, 5, 0, 9]),
    "fashion-mnist": ("fashion", [7, 9, 3, 1]),
    "emoji": ("emoji", [0, 2, 3, 4]),
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def make_examples() -> list[Path]:
    sys.path.insert(0, str(ROOT))
    from tarflow import data

    EXAMPLES.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (prefix, classes) in PICKS.items():
        try:
            test = data.load(name, ROOT / "data").split("test")
        except Exception as e:  # a missing cache skips that dataset, with the reason
            print(f"skipping {name}: {e}")
            continue
        for c in classes:
            idx = int(np.flatnonzero(test.labels == c)[0])
            arr = test.images[idx]
            img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
            path = EXAMPLES / f"{prefix}-{slug(test.class_names[c])}.png"
            img.save(path, optimize=True)
            written.append(path)
    for p in written:
        print("wrote", p.relative_to(ROOT))
    return written


def make_figure() -> Path:
    """A vertical diagram: image -> patches -> tokens -> alternating causal blocks -> Gaussian z."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

    digits = sorted(EXAMPLES.glob("mnist-*.png"))
    digit = np.asarray(Image.open(digits[0]).convert("L")) if digits else np.zeros((28, 28), np.uint8)
    rng = np.random.default_rng(0)
    noise = np.clip(rng.standard_normal((28, 28)), -1, 1)

    fig = Figure(figsize=(6.0, 9.2), dpi=120, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 10.8)
    ax.set_ylim(0, 17)
    ax.axis("off")
    ink, muted, violet, light = "#1f2937", "#6b7280", "#6d28d9", "#ede9fe"

    def arrow(x0, y0, x1, y1, color=muted, style="-|>", lw=1.6):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=14, color=color, lw=lw))

    # the image with its patch grid
    ax.imshow(digit, cmap="gray", extent=(0.6, 3.4, 13.6, 16.4), interpolation="nearest")
    for k in range(8):
        t = 0.6 + k * 0.4
        ax.plot([t, t], [13.6, 16.4], color=violet, lw=0.6, alpha=0.8)
        ax.plot([0.6, 3.4], [13.6 + k * 0.4, 13.6 + k * 0.4], color=violet, lw=0.6, alpha=0.8)
    ax.text(2.0, 16.65, "image x (28×28)", ha="center", fontsize=9, color=ink)
    ax.text(3.9, 15.3, "cut into 4×4 patches,\nread row by row:\n49 tokens of 16 values", fontsize=8.5,
            color=muted, va="center")

    # the token sequence
    for k in range(12):
        ax.add_patch(Rectangle((0.6 + k * 0.55, 12.35), 0.45, 0.45, facecolor=light, edgecolor=violet, lw=0.8))
        if k < 3:
            ax.text(0.825 + k * 0.55, 12.575, f"$x_{k + 1}$", fontsize=7.5, color=violet, ha="center", va="center")
    ax.text(0.6 + 12 * 0.55 + 0.1, 12.55, r"… $x_{49}$", fontsize=8.5, color=ink, va="center")
    arrow(2.0, 13.5, 2.0, 12.9)

    # the blocks
    top = 11.6
    for b in range(4):
        y = top - b * 2.05
        ax.add_patch(FancyBboxPatch((0.6, y - 1.45), 6.4, 1.45, boxstyle="round,pad=0.02,rounding_size=0.15",
                                    facecolor="#f5f3ff", edgecolor=violet, lw=1.2))
        direction = "reads top-down ↓" if b % 2 == 0 else "reads bottom-up ↑ (flipped)"
        ax.text(0.85, y - 0.32, f"flow block {b + 1}", fontsize=9.5, color=violet, weight="bold", va="center")
        ax.text(3.0, y - 0.32, direction, fontsize=8.5, color=ink, va="center")
        ax.text(0.85, y - 0.78, r"causal Transformer reads $x_{<t}$ $\rightarrow$ $a_t,\ b_t$", fontsize=8.5,
                color=ink, va="center")
        ax.text(0.85, y - 1.17, r"$z_t = (x_t - b_t)\,e^{-a_t}$        log-det $= -\Sigma_t\, a_t$", fontsize=8.5,
                color=ink, va="center")
        arrow(3.8, y + 0.55, 3.8, y + 0.05)
    # the latent
    ax.imshow(noise, cmap="gray", extent=(2.4, 5.2, 0.35, 3.15 - 0.0), interpolation="nearest", vmin=-1, vmax=1)
    arrow(3.8, top - 3 * 2.05 - 1.5, 3.8, 3.25)
    ax.text(5.45, 1.75, "z ~ N(0, I)\nsame size as x", fontsize=9, color=ink, va="center")

    # the two directions
    arrow(8.1, 13.0, 8.1, 3.0, color=ink, lw=1.8)
    ax.text(8.35, 8.7, "train / likelihood:\none parallel pass", rotation=270, fontsize=8.5, color=ink,
            va="center", ha="left")
    arrow(9.4, 3.0, 9.4, 13.0, color=violet, lw=1.8)
    ax.text(9.65, 8.0, "sample: undo blocks 4 → 1, token by token\n" + r"$x_t = z_t\,e^{a_t} + b_t$", rotation=90,
            fontsize=8.5, color=violet, va="center", ha="left", multialignment="center")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, facecolor="white")
    print("wrote", FIGURE.relative_to(ROOT))
    return FIGURE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["examples", "figure", "all"])
    args = parser.parse_args()
    if args.what in ("examples", "all"):
        make_examples()
    if args.what in ("figure", "all"):
        make_figure()


if __name__ == "__main__":
    main()
