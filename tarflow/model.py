"""The TarFlow network: patchify, autoregressive Transformer flow blocks, and their inverse.

Module and parameter names follow the reference implementation (apple/ml-tarflow) so that its
released state dicts load with ``strict=True``. ``reverse`` here is the plain inverse of the paper,
one token at a time; :mod:`tarflow.engine` computes the same numbers faster, and
:mod:`tarflow.sampling` puts that behind the sampling API.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
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


class LayerCache:
    """The keys and values of the tokens one attention layer has read so far.

    It belongs to one call of ``reverse`` and is passed in, never kept in the module, so that
    calls running at the same time cannot mix their tokens.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the newest tokens' keys and values (B, heads, n, head_dim); return all of them."""
        self.keys = k if self.keys is None else torch.cat([self.keys, k], dim=2)
        self.values = v if self.values is None else torch.cat([self.values, v], dim=2)
        return self.keys, self.values


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

    def forward(self, x: torch.Tensor, temp: float = 1.0, cache: LayerCache | None = None) -> torch.Tensor:
        """Attention over the sequence x (B, T, C); with a ``cache``, x is the one newest token and
        the earlier tokens' keys and values come from the cache."""
        B, T, C = x.shape
        qkv = self.qkv(_layer_norm_fp32(self.norm, x))
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.extend(k, v)
        # The newest token may read every cached token: causality needs no mask then.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None, scale=self.head_dim**-0.5 / temp)
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

    def forward(self, x: torch.Tensor, temp: float = 1.0, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attention(x, temp, cache)
        return x + self.mlp(x)


@dataclass(frozen=True)
class Guidance:
    """How to steer sampling.

    ``scale`` w extrapolates away from a weaker prediction: out <- out + w (out - out_weak),
    applied to the log-scale a and/or the shift b (``what``). The weak pass uses the "no label"
    class embedding and attention temperature ``attn_temp`` (the only difference for an
    unconditional model). With ``annealed`` the weight grows linearly over a block's tokens.
    """

    scale: float = 0.0
    what: str = "ab"
    attn_temp: float = 1.0
    annealed: bool = False

    def __post_init__(self) -> None:
        if set(self.what) - {"a", "b"}:
            raise ValueError(f"guide_what must be made of 'a' and 'b', got {self.what!r}")
        if self.attn_temp <= 0:
            raise ValueError(f"attention temperature must be positive, got {self.attn_temp}")

    @property
    def active(self) -> bool:
        return self.scale > 0 and bool(self.what)

    def weight(self, step: int, num_tokens: int) -> float:
        """Guidance weight when predicting token ``step + 1`` of a block."""
        if self.annealed:
            return self.scale * (step + 1) / (num_tokens - 1)
        return self.scale


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

    def transformer(self, x: torch.Tensor, pos: torch.Tensor, y: torch.Tensor | None, temp: float = 1.0,
                    caches: list[LayerCache] | None = None) -> torch.Tensor:
        """The block's causal Transformer on tokens x (B, n, D) in block order, with positional
        embeddings ``pos`` (n, W): its output at token t holds (a, b) for token t + 1."""
        h = self.proj_in(x) + pos
        c = self.class_vector(y, x.shape[0])
        if c is not None:
            h = h + c
        for j, layer in enumerate(self.attn_blocks):
            h = layer(h, temp, None if caches is None else caches[j])
        return self.proj_out(h)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) -> z (B, T, D) and the log-scales a (B, T, D), or None in VP mode."""
        x = self.permute(x)
        out = self.transformer(x, self.permute(self.pos_embed, 0), y)
        # Shift by one: token t is transformed using only tokens < t; token 0 is only shifted by 0.
        out = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
        if self.nvp:
            a, b = out.chunk(2, dim=-1)
            z = (x - b) * torch.exp(-at_least_fp32(a)).type(a.dtype)
            return self.permute(z), self.permute(a)
        return self.permute(x - out), None

    def reverse(self, z: torch.Tensor, y: torch.Tensor | None = None, guidance: Guidance = Guidance()) -> torch.Tensor:
        """z (B, T, D) -> x (B, T, D), natural order: the inverse of ``forward``, token by token.

        ``forward`` computes every z_t = (x_t - b_t) exp(-a_t) at once, because a_t and b_t depend
        only on x_<t, which it is given. Going back, x_<t is known only once it has been computed:
        x_0 = z_0 (its a and b are zero), then for t = 1 .. T-1 the Transformer reads x_t-1 (the
        keys and values of the tokens before it wait in a cache) and gives a_t and b_t, and
        x_t = z_t exp(a_t) + b_t. With guidance, a second, weak pass (no label, attention
        temperature ``attn_temp``) reads the same tokens with a cache of its own, and
        a <- a + w (a - a_weak) (likewise b).
        """
        z = self.permute(z)
        pos = self.permute(self.pos_embed, 0)
        T = z.shape[1]
        x = z.clone()
        cache = [LayerCache() for _ in self.attn_blocks]
        weak_cache = [LayerCache() for _ in self.attn_blocks]
        for t in range(1, T):
            previous = x[:, t - 1 : t]
            a, b = self._scale_and_shift(self.transformer(previous, pos[t - 1 : t], y, 1.0, cache))
            if guidance.active:
                weak = self.transformer(previous, pos[t - 1 : t], None, guidance.attn_temp, weak_cache)
                a_weak, b_weak = self._scale_and_shift(weak)
                w = guidance.weight(t - 1, T)
                if "a" in guidance.what:
                    a = a + w * (a - a_weak)
                if "b" in guidance.what:
                    b = b + w * (b - b_weak)
            x[:, t] = z[:, t] * torch.exp(a[:, 0]) + b[:, 0]
        return self.permute(x)

    def _scale_and_shift(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Transformer's output -> (a, b); in VP mode a is zero."""
        if self.nvp:
            a, b = out.chunk(2, dim=-1)
            return a, b
        return torch.zeros_like(out), out


@dataclass(frozen=True)
class Architecture:
    """What decides a TarFlow's parameters: the architecture half of config.json.

    A model's remaining settings (training noise level, class names, dataset, recommended
    sampling) are metadata that travel with the weights.
    """

    in_channels: int
    img_size: int
    patch_size: int
    channels: int
    num_blocks: int
    layers_per_block: int
    nvp: bool = True
    num_classes: int = 0
    head_dim: int = 64
    expansion: int = 4

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"image size {self.img_size} is not a multiple of the patch size {self.patch_size}")

    @property
    def num_tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def token_dim(self) -> int:
        return self.in_channels * self.patch_size**2

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


class SequenceFlow(nn.Module):
    """TarFlow's flow proper, over sequences of ``num_tokens`` tokens of ``token_dim`` values:
    ``num_blocks`` MetaBlocks that read the sequence in alternating order (block k backwards when
    k is odd) and a Gaussian prior N(0, var) on the result.

    What a sequence stands for is a subclass's business: :class:`TarFlow` cuts images into patch
    tokens, :class:`tarflow.points.PointFlow` makes a 2D point two tokens of one value. They say
    how in ``to_tokens`` and ``from_tokens``; everything else (the likelihood's parts, the
    inverse, the loss) is this class's and the same for all of them.
    """

    var: torch.Tensor
    VAR_LR = 0.1  # step of the running estimate of the VP prior variance

    def __init__(self, num_tokens: int, token_dim: int, channels: int, num_blocks: int, layers_per_block: int,
                 nvp: bool = True, num_classes: int = 0, head_dim: int = 64, expansion: int = 4):
        super().__init__()
        self.num_tokens, self.token_dim, self.num_classes, self.nvp = num_tokens, token_dim, num_classes, nvp
        self.blocks = nn.ModuleList(
            MetaBlock(token_dim, channels, num_tokens, layers_per_block, flip=bool(k % 2), head_dim=head_dim,
                      expansion=expansion, nvp=nvp, num_classes=num_classes)
            for k in range(num_blocks)
        )
        # Prior variance per token and dimension: ones in affine mode, learned in VP mode.
        self.register_buffer("var", torch.ones(num_tokens, token_dim))

    @property
    def num_dims(self) -> int:
        return self.num_tokens * self.token_dim

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The data -> its token sequence (B, T, D); here the data are sequences already."""
        self.check_latent(x)
        return x

    def from_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """Token sequence (B, T, D) -> the data's own shape (the inverse of ``to_tokens``)."""
        return h

    def trace(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """Data -> z (B, T, D), each block's output and each block's log-scales (natural order)."""
        h = self.to_tokens(x)
        outputs, logscales = [], []
        for block in self.blocks:
            h, a = block(h, y)
            outputs.append(h)
            logscales.append(a)
        return h, outputs, logscales

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Data -> (z, per-block outputs, logdets); logdets is per sample the sum over blocks of
        -mean(a), the reference's per-dimension convention."""
        z, outputs, logscales = self.trace(x, y)
        logdets = torch.zeros(x.shape[0], device=x.device, dtype=at_least_fp32(z).dtype)
        for a in logscales:
            if a is not None:
                logdets = logdets - at_least_fp32(a).mean(dim=(1, 2))
        return z, outputs, logdets

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Data -> its standard-normal latent (B, T, D), the mirror of ``reverse``.

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

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        guide_what: str = "ab",
        attn_temp: float = 1.0,
        annealed_guidance: bool = False,
    ) -> torch.Tensor:
        """Latent token sequence z (B, T, D), drawn from N(0, 1), -> data.

        The plain inverse: the prior variance ``var`` is applied, then the blocks are inverted
        last to first, each token by token (``MetaBlock.reverse``). For images
        ``tarflow.sampling.reverse`` computes the same numbers about four times faster. ``z`` is
        not modified.
        """
        g = Guidance(guidance, guide_what, attn_temp, annealed_guidance)
        return self.from_tokens(self.reverse_stages(z, y, g)[-1])

    @torch.no_grad()
    def reverse_stages(self, z: torch.Tensor, y: torch.Tensor | None = None,
                       guidance: Guidance = Guidance()) -> list[torch.Tensor]:
        """The token sequences on the way back from a standard-normal z (B, T, D): scaled by the
        prior's standard deviation, then after each inverted block (the last block first); the
        final entry is the data's tokens."""
        self.check_latent(z)
        y = self.check_labels(y, z.shape[0], self.var.device)
        x = z.to(device=self.var.device, dtype=self.var.dtype) * self.var.sqrt()
        stages = [x]
        for block in reversed(self.blocks):
            x = block.reverse(x, y, guidance)
            stages.append(x)
        return stages

    def check_latent(self, z: torch.Tensor) -> None:
        want = (self.num_tokens, self.token_dim)
        if z.dim() != 3 or tuple(z.shape[1:]) != want:
            raise ValueError(f"expected a latent of shape (B, {want[0]}, {want[1]}), got {tuple(z.shape)}")

    def check_labels(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """Labels (batch,) on ``device``, -1 meaning none; None for an unconditional model."""
        if y is None:
            return None
        y = torch.as_tensor(y, device=device).long().view(-1)
        if y.numel() != batch:
            raise ValueError(f"{y.numel()} labels for {batch} latents")
        if not self.num_classes:
            return None
        if bool((y >= self.num_classes).any()):
            raise ValueError(f"labels must be below {self.num_classes}")
        return y

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"params={n / 1e6:.2f}M, tokens={self.num_tokens}, token_dim={self.token_dim}"


class TarFlow(
    SequenceFlow,
    PyTorchModelHubMixin,
    library_name="tarflow",
    tags=["normalizing-flow", "tarflow", "image-generation"],
    paper_url="https://arxiv.org/abs/2412.06329",
):
    """Transformer autoregressive flow over image patches (Zhai et al., 2024): an image is cut
    into patches (``patchify``), the patch sequence goes through the :class:`SequenceFlow`, and
    ``unpatchify`` puts the result back into an image's shape.

    Arguments: the fields of :class:`Architecture`, by position or by name (each is also an
    attribute: ``model.channels``, ...), then by name the metadata that travel with the weights
    in ``config.json``: ``noise_std``, ``class_names``, ``dataset``, ``sampling``.
    """

    def __init__(self, *args: Any, noise_std: float = 0.0, class_names: list[str] | None = None, dataset: str = "",
                 sampling: dict[str, Any] | None = None, **architecture: Any):
        arch = Architecture(*args, **architecture)
        if class_names is not None and len(class_names) != arch.num_classes:
            raise ValueError(f"{len(class_names)} class names given for {arch.num_classes} classes")
        super().__init__(arch.num_tokens, arch.token_dim, arch.channels, arch.num_blocks, arch.layers_per_block,
                         nvp=arch.nvp, num_classes=arch.num_classes, head_dim=arch.head_dim,
                         expansion=arch.expansion)
        self.architecture = arch
        for name, value in dataclasses.asdict(arch).items():
            setattr(self, name, value)
        self.noise_std = noise_std
        self.class_names = list(class_names) if class_names else [str(i) for i in range(arch.num_classes)]
        self.dataset = dataset
        self.sampling = dict(sampling or {})

    @property
    def num_dims(self) -> int:
        return self.in_channels * self.img_size**2

    @property
    def config(self) -> dict[str, Any]:
        """Architecture and metadata, as written to config.json (reflects current metadata)."""
        return {
            **dataclasses.asdict(self.architecture),
            "noise_std": self.noise_std,
            "class_names": list(self.class_names),
            "dataset": self.dataset,
            "sampling": dict(self.sampling),
        }

    def save_pretrained(self, save_directory, **kwargs):  # type: ignore[override]
        """Write config.json (architecture + metadata) and model.safetensors to a folder."""
        if kwargs.get("config") is None:  # push_to_hub passes config=None on to here
            kwargs["config"] = self.config
        return super().save_pretrained(save_directory, **kwargs)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, T, C*p*p) patch sequence in row-major order."""
        return F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C*p*p) patch sequence -> (B, C, H, W) image."""
        size = (self.img_size, self.img_size)
        return F.fold(x.transpose(1, 2), size, self.patch_size, stride=self.patch_size)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> patch tokens, after checking their shape."""
        want = (self.in_channels, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        return self.patchify(x)

    def from_tokens(self, h: torch.Tensor) -> torch.Tensor:
        return self.unpatchify(h)


__all__ = ["TarFlow", "SequenceFlow", "Architecture", "Guidance", "MetaBlock", "AttentionBlock", "Attention",
           "LayerCache", "MLP"]
