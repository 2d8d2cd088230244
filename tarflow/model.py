"""The TarFlow network: patchify, autoregressive Transformer flow blocks, and their inverse.

Module and parameter names follow the reference implementation (apple/ml-tarflow) so that its
released state dicts load with ``strict=True``. Sampling lives in :mod:`tarflow.sampling`;
``TarFlow.reverse`` is a thin entry point into it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _layer_norm_fp32(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    # Normalise in float32 even for bf16/fp16 activations, as the reference does.
    return norm(at_least_fp32(x)).type(x.dtype)


class Attention(nn.Module):
    """Pre-norm multi-head causal self-attention (heads of ``head_dim`` channels)."""

    def __init__(self, channels: int, head_dim: int):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"width {channels} is not a multiple of the head size {head_dim}")
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.num_heads = channels // head_dim
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(_layer_norm_fp32(self.norm, x))
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.head_dim**-0.5 / temp)
        return self.proj(out.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, channels: int, expansion: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.main = nn.Sequential(
            nn.Linear(channels, channels * expansion),
            nn.GELU(),
            nn.Linear(channels * expansion, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(_layer_norm_fp32(self.norm, x))


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, expansion: int):
        super().__init__()
        self.attention = Attention(channels, head_dim)
        self.mlp = MLP(channels, expansion)

    def forward(self, x: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
        x = x + self.attention(x, temp)
        return x + self.mlp(x)


class MetaBlock(nn.Module):
    """One flow block: an affine autoregressive transform over the token sequence.

    ``flip`` makes the block read the sequence in reverse order; inputs and outputs are always in
    natural order.
    """

    attn_mask: torch.Tensor

    def __init__(
        self,
        in_dim: int,
        channels: int,
        num_tokens: int,
        num_layers: int,
        flip: bool,
        head_dim: int = 64,
        expansion: int = 4,
        nvp: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        self.flip = flip
        self.nvp = nvp
        self.in_dim = in_dim
        self.proj_in = nn.Linear(in_dim, channels)
        self.pos_embed = nn.Parameter(torch.randn(num_tokens, channels) * 1e-2)
        if num_classes:
            self.class_embed = nn.Parameter(torch.randn(num_classes, 1, channels) * 1e-2)
        else:
            self.class_embed = None
        self.attn_blocks = nn.ModuleList(
            [AttentionBlock(channels, head_dim, expansion) for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(channels, 2 * in_dim if nvp else in_dim)
        # Zero output layer: every block starts as the identity map.
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        # Unused by our code (attention is causal by construction) but part of the reference layout.
        self.register_buffer("attn_mask", torch.tril(torch.ones(num_tokens, num_tokens)))

    def permute(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Natural order <-> this block's order (a flip is its own inverse)."""
        return x.flip(dim) if self.flip else x

    def class_vector(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Per-sample class embedding (B, 1, W); a negative label or ``y=None`` means "no label",
        represented by the mean of all class embeddings."""
        if self.class_embed is None:
            return None
        mean = self.class_embed.mean(dim=0)  # (1, W)
        if y is None:
            return mean.expand(batch, 1, -1)
        dropped = (y < 0).view(-1, 1, 1)
        return torch.where(dropped, mean, self.class_embed[y.clamp(min=0)])

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) -> z (B, T, D) and the log-scales a (B, T, D), or None in VP mode."""
        x = self.permute(x)
        h = self.proj_in(x) + self.permute(self.pos_embed, 0)
        c = self.class_vector(y, x.shape[0])
        if c is not None:
            h = h + c
        for layer in self.attn_blocks:
            h = layer(h)
        out = self.proj_out(h)
        # Shift by one: token t is transformed using only tokens < t; token 0 is only shifted by 0.
        out = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
        if self.nvp:
            a, b = out.chunk(2, dim=-1)
            z = (x - b) * torch.exp(-at_least_fp32(a)).type(a.dtype)
            return self.permute(z), self.permute(a)
        return self.permute(x - out), None


class TarFlow(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="tarflow",
    tags=["normalizing-flow", "tarflow", "image-generation"],
    paper_url="https://arxiv.org/abs/2412.06329",
):
    """Transformer autoregressive flow over image patches (Zhai et al., 2024).

    The extra keyword arguments after the architecture (``noise_std``, ``class_names``,
    ``dataset``, ``sampling``) are metadata that travel with the weights in ``config.json``.
    """

    var: torch.Tensor
    VAR_LR = 0.1  # step of the running estimate of the VP prior variance

    def __init__(
        self,
        in_channels: int,
        img_size: int,
        patch_size: int,
        channels: int,
        num_blocks: int,
        layers_per_block: int,
        nvp: bool = True,
        num_classes: int = 0,
        head_dim: int = 64,
        expansion: int = 4,
        noise_std: float = 0.0,
        class_names: list[str] | None = None,
        dataset: str = "",
        sampling: dict[str, Any] | None = None,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.in_channels = in_channels
        self.img_size = img_size
        self.patch_size = patch_size
        self.channels = channels
        self.num_blocks = num_blocks
        self.layers_per_block = layers_per_block
        self.nvp = nvp
        self.num_classes = num_classes
        self.head_dim = head_dim
        self.expansion = expansion
        self.num_tokens = (img_size // patch_size) ** 2
        self.token_dim = in_channels * patch_size**2
        self.noise_std = noise_std
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.dataset = dataset
        self.sampling = dict(sampling or {})
        self.blocks = nn.ModuleList(
            MetaBlock(
                self.token_dim,
                channels,
                self.num_tokens,
                layers_per_block,
                flip=bool(k % 2),
                head_dim=head_dim,
                expansion=expansion,
                nvp=nvp,
                num_classes=num_classes,
            )
            for k in range(num_blocks)
        )
        # Prior variance per token and dimension: ones in affine mode, learned in VP mode.
        self.register_buffer("var", torch.ones(self.num_tokens, self.token_dim))

    @property
    def num_dims(self) -> int:
        return self.in_channels * self.img_size**2

    @property
    def config(self) -> dict[str, Any]:
        """Architecture and metadata, as written to config.json (reflects current attributes)."""
        return {
            "in_channels": self.in_channels,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "channels": self.channels,
            "num_blocks": self.num_blocks,
            "layers_per_block": self.layers_per_block,
            "nvp": self.nvp,
            "num_classes": self.num_classes,
            "head_dim": self.head_dim,
            "expansion": self.expansion,
            "noise_std": self.noise_std,
            "class_names": list(self.class_names),
            "dataset": self.dataset,
            "sampling": dict(self.sampling),
        }

    def save_pretrained(self, save_directory, **kwargs):  # type: ignore[override]
        """Write config.json (architecture + metadata) and model.safetensors to a folder."""
        kwargs.setdefault("config", self.config)
        return super().save_pretrained(save_directory, **kwargs)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, T, C*p*p) patch sequence in row-major order."""
        return F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C*p*p) patch sequence -> (B, C, H, W) image."""
        size = (self.img_size, self.img_size)
        return F.fold(x.transpose(1, 2), size, self.patch_size, stride=self.patch_size)

    def trace(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """Image -> z (B, T, D), each block's output and each block's log-scales (natural order)."""
        self._check_image(x)
        h = self.patchify(x)
        outputs, logscales = [], []
        for block in self.blocks:
            h, a = block(h, y)
            outputs.append(h)
            logscales.append(a)
        return h, outputs, logscales

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Image -> (z, per-block outputs, logdets); logdets is per sample the sum over blocks of
        -mean(a), the reference's per-dimension convention."""
        z, outputs, logscales = self.trace(x, y)
        logdets = torch.zeros(x.shape[0], device=x.device, dtype=at_least_fp32(z).dtype)
        for a in logscales:
            if a is not None:
                logdets = logdets - at_least_fp32(a).mean(dim=(1, 2))
        return z, outputs, logdets

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Image (B, C, H, W) -> its standard-normal latent (B, T, D), the mirror of ``reverse``.

        ``forward`` returns the flow's output, whose prior is N(0, var); dividing by the prior's
        standard deviation gives the latent that ``reverse`` takes (in affine mode var is ones).
        """
        z, _, _ = self.trace(x, y)
        return z / self.var.sqrt().to(z.dtype)

    def get_loss(self, z: torch.Tensor, logdets: torch.Tensor) -> torch.Tensor:
        """Training loss: negative log-likelihood per dimension, up to constants."""
        return 0.5 * at_least_fp32(z).pow(2).mean() - logdets.mean()

    @torch.no_grad()
    def update_prior(self, z: torch.Tensor) -> None:
        """Running estimate of the prior variance (used in VP mode)."""
        self.var.lerp_(at_least_fp32(z.detach()).pow(2).mean(dim=0).to(self.var.dtype), self.VAR_LR)

    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        guide_what: str = "ab",
        attn_temp: float = 1.0,
        annealed_guidance: bool = False,
    ) -> torch.Tensor:
        """Latent patch sequence z (B, T, D), drawn from N(0, 1), -> images (B, C, H, W).

        The prior variance ``var`` is applied here, as in the reference. ``z`` is not modified.
        """
        from tarflow.sampling import Guidance, reverse

        g = Guidance(guidance, guide_what, attn_temp, annealed_guidance)
        return reverse(self, z, y, g)

    def _check_image(self, x: torch.Tensor) -> None:
        want = (self.in_channels, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"params={n / 1e6:.2f}M, tokens={self.num_tokens}, token_dim={self.token_dim}"


__all__ = ["TarFlow", "MetaBlock", "AttentionBlock", "Attention", "MLP"]
