"""Tiny models and inputs shared by the tests."""

import torch

from tarflow import TarFlow


def make_model(nvp=True, num_classes=0, num_blocks=2, in_channels=1, img_size=8, patch_size=2,
               channels=32, layers=2, head_dim=16, seed=0, scale=0.1, dtype=torch.float32) -> TarFlow:
    """A tiny model with every weight random and non-zero (proj_out included), so that no
    test passes because a part of the flow is an identity."""
    torch.manual_seed(seed)
    m = TarFlow(in_channels, img_size, patch_size, channels, num_blocks, layers, nvp=nvp,
                num_classes=num_classes, head_dim=head_dim)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
        if not nvp:
            m.var.copy_(0.5 + torch.rand_like(m.var))
    return m.to(dtype).eval()


def images(model: TarFlow, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, model.in_channels, model.img_size, model.img_size)
    return (torch.rand(shape, generator=g) * 2 - 1).to(next(model.parameters()).dtype)
