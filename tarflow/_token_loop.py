"""The sampler's token loop, written for TorchScript.

It is the same computation as ``_BlockSampler.step`` in ``sampling.py`` (same products, same
order, same buffers), looped over tokens ``start..stop-1``. Scripted, it runs in C++ without the
Python GIL, so shards of a batch can be inverted on several CPU cores at the same time; from
Python, many small operations per token keep the GIL busy and threads mostly wait for it.

This file has no ``from __future__ import annotations``: TorchScript reads the annotations.
"""


import torch
import torch.nn.functional as F
from torch import Tensor


def token_loop(
    seq: Tensor, start: int, stop: int,
    table: Tensor, w_in_t: Tensor, kv: Tensor, params: list[Tensor],
    h: Tensor, buf_in: Tensor, buf_q: Tensor, buf_o: Tensor, buf_hidden: Tensor,
    buf_out: Tensor, buf_scores: Tensor,
    score_scale: Tensor | None, weights: list[float], guide_mask: Tensor | None,
    w_out_t: Tensor, b_out: Tensor, heads: int, eps: float, nvp: bool,
) -> None:
    """Compute tokens start+1..stop of ``seq`` (T, B, D) in place, as _BlockSampler.step does."""
    B = buf_in.shape[0]
    R = h.shape[0]
    width = h.shape[1]
    attn_width = buf_q.shape[1]
    hd = buf_o.shape[2]
    D = seq.shape[2]
    guided = R != B
    for i in range(start, stop):
        torch.add(table[i], torch.mm(seq[i], w_in_t, out=buf_in), out=h.view(-1, B, width))
        for layer in range(len(params) // 16):  # 16 tensors per layer, see _BlockSampler.layers
            p = params[16 * layer: 16 * layer + 16]
            cache = kv[layer]  # (T, 2, R, attn_width)
            n = F.layer_norm(h, [width], p[0], p[1], eps)
            slot = cache[i]
            torch.addmm(p[4], n, p[5], out=slot[0])
            torch.addmm(p[6], n, p[7], out=slot[1])
            q = torch.addmm(p[2], n, p[3], out=buf_q).view(R * heads, 1, hd)
            keys = cache[: i + 1, 0].view(i + 1, R * heads, hd).permute(1, 2, 0)
            values = cache[: i + 1, 1].view(i + 1, R * heads, hd).transpose(0, 1)
            scores = torch.bmm(q, keys, out=buf_scores[: R * heads * (i + 1)].view(R * heads, 1, i + 1))
            if score_scale is not None:
                scores = scores * score_scale
            o = torch.bmm(torch.softmax(scores, dim=-1), values, out=buf_o).view(R, attn_width)
            h.addmm_(o, p[9]).add_(p[8])
            hidden = torch.addmm(p[12], F.layer_norm(h, [width], p[10], p[11], eps), p[13], out=buf_hidden)
            h.addmm_(F.gelu(hidden), p[15]).add_(p[14])
        out = torch.addmm(b_out, h, w_out_t, out=buf_out)
        if guided:
            w = weights[i]
            if guide_mask is None:
                out = torch.lerp(out[B:], out[:B], 1.0 + w)
            else:
                out = torch.lerp(out[B:], out[:B], 1.0 + w * guide_mask)
        z_next = seq[i + 1]
        if nvp:
            torch.addcmul(out[:, D:], z_next, torch.exp(out[:, :D]), out=z_next)
        else:
            z_next.add_(out)
