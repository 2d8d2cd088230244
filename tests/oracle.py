"""A plain, reference-style sampler: the oracle the fast sampler is checked (and timed) against.

It follows the published algorithm step by step with the model's own modules: one token at a
time, a key/value cache grown by concatenation, the conditional and the weak (unconditional /
other-temperature) pass run one after the other, guidance combined as a + w (a - a_weak).
Nothing here is shared with tarflow.sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tarflow.model import MetaBlock, TarFlow


def _attend(layer, h, cache, temp):
    att = layer.attention
    B = h.shape[0]
    q, k, v = att.qkv(att.norm(h)).view(B, 1, 3, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
    cache.setdefault("k", []).append(k)
    cache.setdefault("v", []).append(v)
    k = torch.cat(cache["k"], dim=2)
    v = torch.cat(cache["v"], dim=2)
    scores = (q @ k.transpose(-1, -2)) * (att.head_dim**-0.5 / temp)
    out = F.softmax(scores, dim=-1) @ v
    return att.proj(out.transpose(1, 2).reshape(B, 1, -1))


def _predict(block: MetaBlock, token, pos, y, caches, temp):
    """Run the block's transformer on one token with caching; return (a, b) for the next token."""
    h = block.proj_in(token) + pos
    if block.class_embed is not None:
        if y is None:
            h = h + block.class_embed.mean(dim=0)
        else:
            h = h + block.class_embed[y]
    for layer, cache in zip(block.attn_blocks, caches):
        h = h + _attend(layer, h, cache, temp)
        h = h + layer.mlp(h)
    out = block.proj_out(h)
    if block.nvp:
        return out.chunk(2, dim=-1)
    return torch.zeros_like(out), out


def oracle_reverse_block(block: MetaBlock, z, y=None, guidance=0.0, guide_what="ab", attn_temp=1.0,
                         annealed=False):
    x = block.permute(z.clone())
    pos = block.permute(block.pos_embed, 0)
    T = x.shape[1]
    cond_caches = [dict() for _ in block.attn_blocks]
    weak_caches = [dict() for _ in block.attn_blocks]
    for i in range(T - 1):
        a, b = _predict(block, x[:, i : i + 1], pos[i : i + 1], y, cond_caches, 1.0)
        if guidance > 0 and guide_what:
            a_w, b_w = _predict(block, x[:, i : i + 1], pos[i : i + 1], None, weak_caches, attn_temp)
            g = guidance * (i + 1) / (T - 1) if annealed else guidance
            if "a" in guide_what:
                a = a + g * (a - a_w)
            if "b" in guide_what:
                b = b + g * (b - b_w)
        x[:, i + 1] = x[:, i + 1] * torch.exp(a[:, 0]) + b[:, 0]
    return block.permute(x)


@torch.no_grad()
def oracle_reverse(model: TarFlow, z, y=None, guidance=0.0, guide_what="ab", attn_temp=1.0, annealed=False):
    """Latent (B, T, D) -> images (B, C, H, W), the plain way."""
    x = z * model.var.sqrt()
    for block in reversed(model.blocks):
        x = oracle_reverse_block(block, x, y, guidance, guide_what, attn_temp, annealed)
    return model.unpatchify(x)
