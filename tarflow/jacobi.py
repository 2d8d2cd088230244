"""Parallel (Jacobi) decoding of a flow block's inverse.

Going back through a block, token t is x_t = z_t exp(a_t) + b_t with a_t, b_t computed from
x_<t. Sequential decoding computes one token per Transformer pass. Jacobi decoding guesses every
token of a window of the sequence at once (first guess: x = z), runs the Transformer over the
whole window in one pass, recomputes every token of the window from that pass's a and b, and
repeats until the largest change of a token value is at most ``tol`` or ``max_iters`` passes have
run. It is a fixed-point iteration whose fixed point is the sequential result, and it reaches it
exactly after as many passes as the window has tokens (pass n fixes the window's n-th token), so
only the count of passes needed to be within ``tol`` decides whether it pays.

Windows follow one another (Gauss-Seidel across windows, as in GS-Jacobi, Liu and Qin 2025): a
window starts once the one before it is done and reads its keys and values from a cache. Each
pass writes its window's keys and values into that cache, so when a window stops the cache holds
those of its last inputs, which differ from the final tokens by at most about ``tol``.

The block's own modules compute each pass (weights are not re-arranged); both guidance passes run
as one batch of 2B rows, the weak rows' attention temperature folded into their queries.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from tarflow.engine import Inverter
from tarflow.model import Guidance, MetaBlock, _layer_norm_fp32, at_least_fp32

DECODE_CHOICES = ("sequential", "jacobi")


@dataclass(frozen=True)
class Jacobi:
    """How Jacobi decoding runs.

    ``tol``: a window is done when no token value changed by more than this in the last pass
    (token values are in the data's [-1, 1] units). ``window``: tokens per window (0: the whole
    block). ``max_iters``: passes per window at most (0: no cap besides the window's length,
    after which the result is exact). ``sequential_first``: invert the first block sampled (the
    last in ``model.blocks``) token by token, as selective Jacobi decoding suggests.
    """

    tol: float = 1e-3
    window: int = 0
    max_iters: int = 0
    sequential_first: bool = False

    def __post_init__(self) -> None:
        if not self.tol >= 0:
            raise ValueError("the Jacobi tolerance must be non-negative")
        if self.window < 0 or self.max_iters < 0:
            raise ValueError("the Jacobi window and iteration cap must be non-negative")


@dataclass
class DecodeReport:
    """Passes per window for every block inverted by Jacobi decoding (keyed by the block's index
    in ``model.blocks``); blocks inverted token by token are listed in ``sequential``."""

    passes: dict[int, list[int]] = field(default_factory=dict)
    work: dict[int, int] = field(default_factory=dict)  # token positions computed, all passes (sequential: T-1)
    sequential: list[int] = field(default_factory=list)

    def total(self, block: int) -> int:
        return sum(self.passes.get(block, []))

    def summary(self) -> str:
        parts = [f"block {k}: {self.total(k)} passes ({len(v)} windows, {self.work.get(k, 0)} token positions)"
                 for k, v in sorted(self.passes.items())]
        parts += [f"block {k}: sequential" for k in self.sequential]
        return "; ".join(parts)


class _BlockPasses:
    """One block's Jacobi passes for one call: the key/value cache (allocated at full length)
    and what every pass adds per row (class vector, attention temperature, guidance)."""

    def __init__(self, block: MetaBlock, y: Tensor | None, batch: int, guidance: Guidance):
        self.block, self.guidance = block, guidance
        self.guided = guidance.active
        param = block.proj_in.weight
        self.rows = 2 * batch if self.guided else batch
        self.pos = block.permute(block.pos_embed.detach(), 0)
        self.T = self.pos.shape[0]
        classes = [block.class_vector(y, batch)] + ([block.class_vector(None, batch)] if self.guided else [])
        self.extra = None if classes[0] is None else torch.cat(classes).detach()  # (rows, 1, W)
        self.query_scale = None
        if self.guided and guidance.attn_temp != 1.0:  # reference: scores * 1/temp on the weak pass
            scale = torch.ones(self.rows, 1, 1, 1, device=param.device, dtype=param.dtype)
            scale[batch:] = 1.0 / guidance.attn_temp
            self.query_scale = scale
        first = block.attn_blocks[0].attention if len(block.attn_blocks) else None
        heads, hd = (first.num_heads, first.head_dim) if first is not None else (1, 1)
        self.keys = torch.empty(len(block.attn_blocks), self.rows, heads, self.T, hd, device=param.device,
                                dtype=param.dtype)
        self.values = torch.empty_like(self.keys)
        if self.guided:
            weights = [guidance.weight(i, self.T) for i in range(self.T)]
            self.guide_weights = torch.tensor(weights, device=param.device, dtype=param.dtype)
            D, out_dim = block.in_dim, block.proj_out.out_features
            mask = torch.zeros(out_dim, device=param.device, dtype=param.dtype)
            if not block.nvp:
                mask[:] = float("b" in guidance.what)
            else:
                mask[:D] = float("a" in guidance.what)
                mask[D:] = float("b" in guidance.what)
            self.guide_mask = mask

    def outputs(self, x: Tensor, p: int) -> Tensor:
        """The block's output (B, n, out) at positions p .. p+n-1 for inputs x (B, n, D) there,
        guidance applied; writes those positions' keys and values into the cache."""
        block, n = self.block, x.shape[1]
        rows = torch.cat([x, x]) if self.guided else x
        h = block.proj_in(rows) + self.pos[p : p + n]
        if self.extra is not None:
            h = h + self.extra
        end = p + n
        # query i (position p + i) may read keys 0 .. p + i
        allowed = torch.arange(end, device=x.device) <= (p + torch.arange(n, device=x.device))[:, None]
        for j, layer in enumerate(block.attn_blocks):
            att = layer.attention
            qkv = att.qkv(_layer_norm_fp32(att.norm, h))
            q, k, v = qkv.view(self.rows, n, 3, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
            self.keys[j, :, :, p:end] = k
            self.values[j, :, :, p:end] = v
            if self.query_scale is not None:
                q = q * self.query_scale
            o = F.scaled_dot_product_attention(q, self.keys[j, :, :, :end], self.values[j, :, :, :end],
                                               attn_mask=allowed, scale=att.head_dim**-0.5)
            h = h + att.proj(o.transpose(1, 2).reshape(self.rows, n, -1))
            h = h + layer.mlp(h)
        out = block.proj_out(h)
        if not self.guided:
            return out
        B = x.shape[0]
        w = self.guide_weights[p:end].view(1, n, 1)
        return torch.lerp(out[B:], out[:B], 1.0 + w * self.guide_mask)

    def tokens(self, z: Tensor, out: Tensor) -> Tensor:
        """x = z exp(a) + b (VP mode: x = z + b) from the block's outputs for those tokens."""
        if not self.block.nvp:
            return z + out
        D = z.shape[-1]
        a = out[..., :D]
        return z * torch.exp(at_least_fp32(a)).to(a.dtype) + out[..., D:]


def jacobi_window(passes: _BlockPasses, seq: Tensor, p: int, q: int, settings: Jacobi) -> tuple[int, int]:
    """Compute tokens p+1 .. q of ``seq`` (T, B, D, block order) in place by Jacobi passes over
    inputs p .. q-1; returns (passes, token positions computed over all passes).

    The window shrinks from the left as it converges: the leading tokens whose last change was
    within ``tol`` are final, and so are the keys and values computed from them, so the next pass
    starts after them. The first token of a pass is exact (everything it reads is final), so
    every pass fixes at least one token and a window of n tokens takes at most n passes.
    """
    z = seq[p + 1 : q + 1].transpose(0, 1).clone()  # (B, n, D): the latents of the window's tokens
    cap = q - p if settings.max_iters == 0 else min(settings.max_iters, q - p)
    done = work = 0
    lo = p
    while lo < q and done < cap:
        new = passes.tokens(z[:, lo - p :], passes.outputs(seq[lo:q].transpose(0, 1), lo))
        change = (new - seq[lo + 1 : q + 1].transpose(0, 1)).abs().amax(dim=(0, 2))  # per token
        seq[lo + 1 : q + 1] = new.transpose(0, 1)
        done, work = done + 1, work + (q - lo)
        unsettled = ~(change <= settings.tol)  # NaN counts as unsettled
        if not bool(unsettled.any()):
            break
        lo += max(1, int(unsettled.nonzero()[0, 0]))
    return done, work


class JacobiInverter:
    """The Jacobi counterpart of :class:`tarflow.engine.Inverter` (same ``advance``), recording
    passes per window in ``report``."""

    def __init__(self, batch: int, y: Tensor | None, guidance: Guidance, device: torch.device, dtype: torch.dtype,
                 settings: Jacobi = Jacobi()):
        self.batch, self.y, self.guidance, self.dtype, self.settings = batch, y, guidance, dtype, settings
        self.sequential = Inverter(batch, y, guidance, device, dtype) if settings.sequential_first else None
        self.first: MetaBlock | None = None
        self.block: MetaBlock | None = None
        self.passes: _BlockPasses | None = None
        self.report = DecodeReport()
        self.index: dict[int, int] = {}

    def advance(self, block: MetaBlock, seq: Tensor, start: int, stop: int, index: int | None = None) -> None:
        """Compute tokens start+1..stop of ``seq`` (T, B, D, in ``block``'s order) in place.
        ``index`` (the block's place in the model) keys the report."""
        if self.first is None:
            self.first = block
        key = id(block) if index is None else index
        if self.sequential is not None and block is self.first:
            self.sequential.advance(block, seq, start, stop)
            if key not in self.report.sequential:
                self.report.sequential.append(key)
            return
        with torch.inference_mode():
            if self.block is not block:
                work = block
                if block.proj_in.weight.dtype != self.dtype:  # e.g. bf16 sampling of a float32 model
                    work = copy.deepcopy(block).to(self.dtype)
                    for module in work.modules():  # normalisation runs in float32 (as the reference's)
                        if isinstance(module, torch.nn.LayerNorm):
                            module.float()
                self.passes = _BlockPasses(work, self.y, self.batch, self.guidance)
                self.block = block
            assert self.passes is not None
            size = stop - start if self.settings.window == 0 else self.settings.window
            counts = self.report.passes.setdefault(key, [])
            for p in range(start, stop, size):
                done, work = jacobi_window(self.passes, seq, p, min(stop, p + size), self.settings)
                counts.append(done)
                self.report.work[key] = self.report.work.get(key, 0) + work
