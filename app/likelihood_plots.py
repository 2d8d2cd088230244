"""Figures of the Likelihood tab: overlaid bits/dim histograms, the bits split into parts, and
images with an erased region shown or outlined."""

from __future__ import annotations

import numpy as np

from app.render import ACCENT, _figure, _style, _to_array, enlarge, squeeze_grey

OWN_COLOUR = "#94a3b8"
SET_COLOURS = {"mnist": "#2563eb", "fashion-mnist": "#059669", "emoji": "#d97706", "samples": ACCENT,
               "upside down": "#0891b2", "inverted": "#dc2626", "constant": "#ca8a04", "noise": "#475569"}
HOLE = np.array([217, 70, 239], dtype=np.uint8)  # the erased region: one colour that no dataset uses
PART_COLOURS = ["#cbd5e1", "#7c3aed", "#2563eb", "#0891b2", "#059669", "#ca8a04", "#dc2626", "#db2777"]


def _colour(name: str, k: int) -> str:
    return SET_COLOURS.get(name, PART_COLOURS[2 + k % 6])


def histograms(totals: dict[str, np.ndarray], groups: list[tuple[str, list[str]]], own: str | None,
               labels: dict[str, str], marker: tuple[float, str] | None = None) -> np.ndarray:
    """One panel per group of sets, sharing the bits/dim axis; the model's own held-out images in
    grey behind each panel; ``marker`` = (bits/dim, label) draws a line across every panel."""
    values = np.concatenate([v for v in totals.values()] + ([np.array([marker[0]])] if marker else []))
    lo, hi = np.percentile(values, [0.5, 99.5])
    if marker:
        lo, hi = min(lo, marker[0]), max(hi, marker[0])
    pad = 0.04 * (hi - lo) + 1e-3
    bins = np.linspace(lo - pad, hi + pad, 61)
    fig = _figure(6.6, 1.9 * len(groups) + 0.6)
    axes = np.atleast_1d(fig.subplots(len(groups), 1, sharex=True))
    for ax, (title, names) in zip(axes, groups):
        if own in totals:
            ax.hist(np.clip(totals[own], bins[0], bins[-1]), bins=bins, density=True, color=OWN_COLOUR, alpha=0.55,
                    label=labels[own])
        for k, name in enumerate(names):
            ax.hist(np.clip(totals[name], bins[0], bins[-1]), bins=bins, density=True, histtype="step", lw=1.7,
                    color=_colour(name, k), label=labels[name])
        if marker:
            ax.axvline(marker[0], color="#111827", lw=1.6, ls="--")
        ax.set_title(title, fontsize=9, color="#333", loc="left")
        ax.set_yticks([])
        ax.legend(fontsize=7.2, frameon=False, loc="upper right")
        _style(ax)
    if marker:
        axes[0].annotate(marker[1], (marker[0], axes[0].get_ylim()[1]), xytext=(4, -10), textcoords="offset points",
                         fontsize=8, color="#111827", va="top")
    axes[-1].set_xlabel("bits/dim (training noise added, no label): right = less likely", fontsize=8)
    fig.tight_layout(h_pad=0.6)
    return _to_array(fig)


def bits_bars(rows: list[tuple[str, np.ndarray]], names: list[str]) -> np.ndarray:
    """Diverging stacked bars, one per row (label, parts in bits/dim): positive parts stack right
    of 0, negative ones left; a diamond and the number mark each row's total (the parts' sum)."""
    fig = _figure(6.6, 1.0 + 0.62 * len(rows) + 0.2 * len(names))
    ax = fig.subplots()
    for r, (_, parts) in enumerate(rows):
        y = len(rows) - 1 - r
        right = left = 0.0
        for k, v in enumerate(parts):
            start = right if v >= 0 else left + v
            ax.barh(y, abs(v), left=start, height=0.55, color=PART_COLOURS[k % len(PART_COLOURS)],
                    edgecolor="white", lw=0.6, label=names[k] if r == 0 else None)
            if abs(v) > 0.6:
                ax.text(start + abs(v) / 2, y, f"{v:+.2f}", ha="center", va="center", fontsize=7,
                        color="#111" if k == 0 else "white")
            right, left = (right + v, left) if v >= 0 else (right, left + v)
        total = float(np.sum(parts))
        ax.plot([total], [y], marker="D", color="#111827", ms=6, zorder=5)
        ax.text(total, y + 0.36, f"total {total:.3f}", ha="center", fontsize=8, color="#111827")
    ax.axvline(0, color="#111827", lw=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows][::-1], fontsize=8.5)
    ax.set_ylim(-0.6, len(rows) - 0.1)
    ax.set_xlabel("bits/dim (negative parts pull the total down)", fontsize=8)
    ax.legend(fontsize=7.2, frameon=False, ncol=min(4, len(names)), loc="upper center",
              bbox_to_anchor=(0.5, -0.28 - 0.04 * len(rows)))
    _style(ax)
    fig.tight_layout()
    return _to_array(fig)


def rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 1 or 3) or (H, W) -> (H, W, 3)."""
    arr = squeeze_grey(arr)
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def with_hole(arr: np.ndarray, mask: np.ndarray, scale: int) -> np.ndarray:
    """The image (H, W, C uint8) with its erased pixels painted in the hole colour, enlarged."""
    out = rgb(arr).copy()
    out[mask] = HOLE
    return enlarge(out, scale)


def outlined(arr: np.ndarray, mask: np.ndarray, scale: int) -> np.ndarray:
    """The image enlarged by ``scale`` with the border of the ``mask`` region drawn in the hole
    colour (on the pixels just inside it, so no kept pixel is covered)."""
    big = enlarge(rgb(arr), scale).copy()
    m = enlarge(mask.astype(np.uint8), scale).astype(bool)
    inner = m.copy()
    for axis in (0, 1):
        for step in (1, -1):
            inner &= np.roll(m, step, axis=axis)
    edge = m & ~inner
    # the image border counts as outside, so holes touching it are closed too
    edge[0, :] |= m[0, :]
    edge[-1, :] |= m[-1, :]
    edge[:, 0] |= m[:, 0]
    edge[:, -1] |= m[:, -1]
    big[edge] = HOLE
    return big
