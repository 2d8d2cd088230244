"""Sampling: the guided, cached, streaming inverse of a TarFlow, plus score-based denoising.

Every call owns its sampling state (the key/value cache, the token buffer), so one model can
serve several requests from several threads at once. Both guidance passes (conditional and
unconditional) run as one batch of 2B rows, and each layer's key/value cache is allocated once,
at its full length, per call. On a CPU the token loop runs as TorchScript, and the two halves of
a batch are inverted at the same time on two worker threads (see CPU_SHARDS below).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tarflow.model import MetaBlock, TarFlow

OVERFLOW_MESSAGE = "sampling overflowed (non-finite values); lower the guidance scale or the prior temperature"

# On a CPU in float32/float64 the token loop runs as TorchScript (tarflow/_token_loop.py), which
# needs no GIL. When the process may use 2+ intra-op threads, a batch is split into CPU_SHARDS
# shards that are inverted at the same time on worker threads of one intra-op thread each: the
# products here are too small for threads inside one product to pay, but whole shards run side by
# side. See benchmarks/sampling.py. USE_SCRIPTED_LOOP = False selects the plain Python loop.
USE_SCRIPTED_LOOP = True
CPU_SHARDS = 2

_script_lock = threading.Lock()
_scripted: list = []  # [the scripted token loop, or None when TorchScript is unavailable]
_pool: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked child starts its own workers


def _scripted_loop() -> Callable | None:
    """The scripted token loop, compiled on first use; None if TorchScript cannot compile it."""
    if not USE_SCRIPTED_LOOP:
        return None
    with _script_lock:
        if not _scripted:
            try:
                from tarflow._token_loop import token_loop

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch 2.13 marks TorchScript as deprecated
                    _scripted.append(torch.jit.script(token_loop))
            except Exception:  # noqa: BLE001 - any failure means: use the Python loop
                _scripted.append(None)
        return _scripted[0]


def _one_intra_op_thread() -> None:
    torch.get_num_threads()  # a thread takes up the process default on first use: let that happen now
    torch.set_num_threads(1)  # then this thread's own setting (OpenMP and MKL keep it per thread)


def _worker_pool() -> ThreadPoolExecutor:
    """CPU_SHARDS worker threads, each with one intra-op thread."""
    with _script_lock:
        pid = os.getpid()
        if pid not in _pool:
            threads = torch.get_num_threads()
            pool = ThreadPoolExecutor(CPU_SHARDS, thread_name_prefix="tarflow-sampler",
                                      initializer=_one_intra_op_thread)
            started = threading.Barrier(CPU_SHARDS)
            list(pool.map(lambda _: started.wait(), range(CPU_SHARDS)))  # start every worker now
            # torch.set_num_threads also sets the default that threads started later take up:
            # put back this thread's value, leaving the workers at one.
            torch.set_num_threads(threads)
            _pool[pid] = pool
        return _pool[pid]


def _shards(batch: int, device: torch.device, dtype: torch.dtype) -> list[tuple[int, int]]:
    """Row ranges of the batch that are inverted concurrently (one range: no concurrency)."""
    n = 1
    if (device.type == "cpu" and dtype in (torch.float32, torch.float64) and torch.get_num_threads() > 1
            and _scripted_loop() is not None):
        n = max(1, min(CPU_SHARDS, batch))
    edges = [round(k * batch / n) for k in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


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


@dataclass
class Frame:
    """A snapshot during sampling.

    ``stage`` counts the blocks inverted so far (0 = the prior sample); ``block`` is the index in
    ``model.blocks`` of the block being inverted (None at stage 0); ``tokens`` of its
    ``num_tokens`` tokens are final; ``latent`` is the whole state as an image (B, C, H, W).
    """

    stage: int
    block: int | None
    tokens: int
    num_tokens: int
    latent: torch.Tensor

    @property
    def block_done(self) -> bool:
        """True at the end of a block (and for the prior sample, which is complete)."""
        return self.tokens == self.num_tokens

    @property
    def is_prior(self) -> bool:
        return self.stage == 0


class _BlockSampler:
    """Inverts one MetaBlock for one call; holds that call's cache and pre-arranged weights."""

    def __init__(self, block: MetaBlock, y: torch.Tensor | None, batch: int, guidance: Guidance,
                 dtype: torch.dtype):
        self.block = block
        self.guided = guidance.active
        self.guidance = guidance
        self.batch = batch
        self.rows = 2 * batch if self.guided else batch
        self.dtype = dtype
        # bf16/fp16 keep normalisation, softmax and exp in float32, as autocast would.
        self.low_precision = dtype not in (torch.float32, torch.float64)
        self.D = block.in_dim
        p = block.proj_in.weight
        device = p.device
        T = block.pos_embed.shape[0]
        self.T = T

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype)

        # Input projection: rows of the step input are shared by both passes; what differs is the
        # additive part: position + bias + class vector, laid out as (T, passes, B, W).
        pos = block.permute(block.pos_embed.detach(), 0) + block.proj_in.bias.detach()
        cls = block.class_vector(y, batch)
        passes = [cls]
        if self.guided:
            passes.append(block.class_vector(None, batch))
        table = []
        for c in passes:
            extra = pos[:, None, :].expand(T, batch, -1)
            if c is not None:
                extra = extra + c.detach().view(1, batch, -1)
            table.append(extra)
        self.table = cast(torch.stack(table, dim=1))  # (T, passes, B, W)
        self.w_in = cast(p)

        # Key/value cache for every layer, allocated once at full length: (layers, T, 2, rows, heads * hd).
        # Token i's keys and values are two contiguous (rows, heads * hd) blocks, so the products
        # write straight into the cache; attention reads them through strided views.
        heads = [(lay.attention.num_heads, lay.attention.head_dim) for lay in block.attn_blocks]
        H, hd = heads[0] if heads else (1, 1)
        R = self.rows
        self.kv = torch.empty(len(heads), T, 2, R, H * hd, device=device, dtype=dtype)

        # Per layer: weights as the step uses them (transposed views, softmax scale folded into the
        # query projection), so a step does no re-arranging.
        self.layers = []
        for layer in block.attn_blocks:
            att, mlp = layer.attention, layer.mlp
            w_qkv = att.qkv.weight.detach().clone()
            b_qkv = att.qkv.bias.detach().clone()
            w_qkv[: H * hd] *= hd**-0.5
            b_qkv[: H * hd] *= hd**-0.5
            W = H * hd
            self.layers.append((
                cast(att.norm.weight), cast(att.norm.bias),
                # queries, keys and values as three products
                cast(b_qkv[:W]), cast(w_qkv[:W]).t(), cast(b_qkv[W:2 * W]), cast(w_qkv[W:2 * W]).t(),
                cast(b_qkv[2 * W:]), cast(w_qkv[2 * W:]).t(),
                cast(att.proj.bias), cast(att.proj.weight).t(),
                cast(mlp.norm.weight), cast(mlp.norm.bias),
                cast(mlp.main[0].bias), cast(mlp.main[0].weight).t(),
                cast(mlp.main[2].bias), cast(mlp.main[2].weight).t(),
            ))
        self.heads = (H, hd)
        self.norm_shape = (block.proj_in.out_features,)
        self.eps = block.attn_blocks[0].attention.norm.eps if heads else 1e-5
        self.w_out_t = cast(block.proj_out.weight).t()
        self.b_out = cast(block.proj_out.bias)

        # Attention temperature of the weak pass, applied to its scores.
        self.score_scale = None
        if self.guided and guidance.attn_temp != 1.0:
            s = torch.ones(2, batch * H, 1, 1, device=device, dtype=dtype)
            s[1] = 1.0 / guidance.attn_temp
            self.score_scale = s.view(R * H, 1, 1)

        # Which output columns guidance acts on (a: first D, b: last D; VP mode has only b).
        out_dim = block.proj_out.out_features
        if block.nvp:
            mask = torch.zeros(out_dim, device=device, dtype=dtype)
            if "a" in guidance.what:
                mask[: self.D] = 1
            if "b" in guidance.what:
                mask[self.D:] = 1
        else:
            mask = torch.full((out_dim,), float("b" in guidance.what), device=device, dtype=dtype)
        self.all_columns = bool(mask.all())
        self.guide_mask = mask
        self.weights = [guidance.weight(i, T) for i in range(T)] if self.guided else []

        # Work buffers reused by every step (the products' outputs and the residual stream): they
        # stay hot in cache and cost no allocations. The attention scores of token i use the
        # first R*H*(i+1) values of one flat buffer, as a contiguous (R*H, 1, i+1) view.
        width = block.proj_in.out_features
        hidden = block.attn_blocks[0].mlp.main[0].out_features if heads else width

        def buffer(*shape: int) -> torch.Tensor:
            return torch.empty(*shape, device=device, dtype=dtype)

        self.h = buffer(R, width)
        self.buf_in = buffer(batch, width)
        self.buf_q, self.buf_o = buffer(R, H * hd), buffer(R * H, 1, hd)
        self.buf_hidden, self.buf_out = buffer(R, hidden), buffer(R, out_dim)
        flat = buffer(R * H * T)
        self.buf_scores = [flat[: R * H * (i + 1)].view(R * H, 1, i + 1) for i in range(T)]

        self.scripted = (_scripted_loop() if device.type == "cpu" and dtype in (torch.float32, torch.float64)
                         else None)
        if self.scripted is not None:
            self.script_args = (
                self.table, self.w_in.t(), self.kv, [t for L in self.layers for t in L], self.h, self.buf_in,
                self.buf_q, self.buf_o, self.buf_hidden, self.buf_out, flat, self.score_scale,
                self.weights, None if self.all_columns else self.guide_mask, self.w_out_t, self.b_out, H,
                self.eps, bool(block.nvp),
            )
        else:
            # Per-step views into each layer's cache for the Python loop: the keys (R*H, hd, i+1)
            # and values (R*H, i+1, hd) that token i attends to.
            self.cache_views = [(
                [kv[: i + 1, 0].view(i + 1, R * H, hd).permute(1, 2, 0) for i in range(T)],
                [kv[: i + 1, 1].view(i + 1, R * H, hd).transpose(0, 1) for i in range(T)],
            ) for kv in self.kv]

    def run(self, seq: torch.Tensor, start: int, stop: int) -> None:
        """Compute tokens start+1..stop of ``seq`` (T, B, D) in place."""
        if self.scripted is not None:
            self.scripted(seq, start, stop, *self.script_args)
        else:
            for i in range(start, stop):
                self.step(seq, i)

    def _norm(self, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.low_precision:
            return F.layer_norm(h.float(), self.norm_shape, w.float(), b.float(), self.eps).to(self.dtype)
        return F.layer_norm(h, self.norm_shape, w, b, self.eps)

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        if self.low_precision:
            return torch.softmax(scores.float(), dim=-1).to(self.dtype)
        return torch.softmax(scores, dim=-1)

    def step(self, seq: torch.Tensor, i: int) -> None:
        """Given tokens 0..i of ``seq`` (T, B, D) in block order, compute token i + 1 in place.

        This is the hot loop (blocks x tokens calls): each line is one or two kernels, with no
        re-arranging of weights or cache.
        """
        B, R = self.batch, self.rows
        H, hd = self.heads
        addmm, bmm, norm = torch.addmm, torch.bmm, self._norm
        h = self.h  # the residual stream of both passes (R, W), updated in place
        torch.add(self.table[i], torch.mm(seq[i], self.w_in.t(), out=self.buf_in), out=h.view(-1, B, h.shape[1]))
        for (ln1_w, ln1_b, b_q, w_q, b_k, w_k, b_v, w_v, b_proj, w_proj, ln2_w, ln2_b, b1, w1, b2, w2), \
                cache, (keys, values) in zip(self.layers, self.kv, self.cache_views):
            n = norm(h, ln1_w, ln1_b)
            slot = cache[i]  # token i's (2, R, H*hd) keys and values
            addmm(b_k, n, w_k, out=slot[0])
            addmm(b_v, n, w_v, out=slot[1])
            q = addmm(b_q, n, w_q, out=self.buf_q).view(R * H, 1, hd)
            scores = bmm(q, keys[i], out=self.buf_scores[i])  # (R*H, 1, i+1)
            if self.score_scale is not None:
                scores = scores * self.score_scale
            o = bmm(self._softmax(scores), values[i], out=self.buf_o).view(R, H * hd)
            # residual products accumulate into h in place; the bias follows (no bias copy)
            h.addmm_(o, w_proj).add_(b_proj)
            h.addmm_(F.gelu(addmm(b1, norm(h, ln2_w, ln2_b), w1, out=self.buf_hidden)), w2).add_(b2)
        out = addmm(self.b_out, h, self.w_out_t, out=self.buf_out)
        if self.guided:
            w = self.weights[i]
            weight = 1.0 + w if self.all_columns else 1.0 + w * self.guide_mask
            out = torch.lerp(out[B:], out[:B], weight)
        z_next = seq[i + 1]
        if self.block.nvp:
            a, b = out[:, : self.D], out[:, self.D:]
            scale = torch.exp(a.float()).to(self.dtype) if self.low_precision else torch.exp(a)
            torch.addcmul(b, z_next, scale, out=z_next)
        else:
            z_next.add_(out)


class _Shard:
    """Rows lo..hi of a batch and, per block, the sampler that inverts them."""

    def __init__(self, lo: int, hi: int, y: torch.Tensor | None, guidance: Guidance, dtype: torch.dtype):
        self.lo, self.hi = lo, hi
        self.y = None if y is None else y[lo:hi]
        self.guidance, self.dtype = guidance, dtype
        self.block: MetaBlock | None = None
        self.runner: _BlockSampler | None = None

    def advance(self, block: MetaBlock, seq: torch.Tensor, start: int, stop: int) -> None:
        """Compute tokens start+1..stop of this shard's rows of ``seq`` (T, B, D) in place."""
        with torch.inference_mode():  # per thread: workers enter it themselves
            if self.block is not block:  # built where it runs, so a worker does its own setup
                self.runner = _BlockSampler(block, self.y, self.hi - self.lo, self.guidance, self.dtype)
                self.block = block
            self.runner.run(seq[:, self.lo:self.hi], start, stop)


def _advance_all(shards: list[_Shard], block: MetaBlock, seq: torch.Tensor, start: int, stop: int) -> None:
    """Advance every shard from token start to stop; several shards run on the worker threads."""
    if len(shards) == 1:
        shards[0].advance(block, seq, start, stop)
        return
    pool = _worker_pool()
    for job in [pool.submit(s.advance, block, seq, start, stop) for s in shards]:
        job.result()


def _last(items):
    """Run a generator to its end; return what it yielded last."""
    return deque(items, maxlen=1)[0]


def _check_latent(model: TarFlow, z: torch.Tensor) -> None:
    want = (model.num_tokens, model.token_dim)
    if z.dim() != 3 or tuple(z.shape[1:]) != want:
        raise ValueError(f"expected a latent of shape (B, {want[0]}, {want[1]}), got {tuple(z.shape)}")


def reverse_stream(
    model: TarFlow,
    z: torch.Tensor,
    y: torch.Tensor | None = None,
    guidance: Guidance = Guidance(),
    every: int | None = None,
    dtype: torch.dtype | None = None,
    check_finite: bool = False,
) -> Iterator[Frame]:
    """Invert the flow from the latent z (B, T, D), yielding a Frame for the prior sample, after
    each block and, if ``every`` is set, every ``every`` tokens inside a block.

    The last frame's latent is the sample. Work happens in inference mode between yields only,
    so the consumer's own autograd state is never changed. With ``check_finite`` a block that
    ends with non-finite values raises FloatingPointError at once instead of running on.
    """
    _check_latent(model, z)
    if every is not None and every < 1:
        raise ValueError("every must be a positive number of tokens")
    param = next(model.parameters())
    dtype = dtype or param.dtype
    # Frames are handed out in a type every consumer can use; float64 stays float64 for tests.
    out_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    B, T, _ = z.shape
    device = param.device
    if y is not None:
        y = torch.as_tensor(y, device=device).long().view(-1)
        if y.numel() != B:
            raise ValueError(f"{y.numel()} labels for {B} latents")
        if model.num_classes and bool((y >= model.num_classes).any()):
            raise ValueError(f"labels must be below {model.num_classes}")
        if not model.num_classes:
            y = None
    with torch.inference_mode():
        seq = (z.to(device=device, dtype=model.var.dtype) * model.var.sqrt()).to(dtype)
        seq = seq.transpose(0, 1).contiguous()  # (T, B, D), natural order
        frame = Frame(0, None, T, T, model.unpatchify(seq.transpose(0, 1).to(out_dtype)))
    yield frame
    num_blocks = len(model.blocks)
    shards = [_Shard(lo, hi, y, guidance, dtype) for lo, hi in _shards(B, device, dtype)]
    for stage, k in enumerate(reversed(range(num_blocks)), start=1):
        block = model.blocks[k]
        with torch.inference_mode():
            seq = block.permute(seq, 0).contiguous()  # this block's order
        i = 0
        while i < T - 1:
            stop = T - 1 if every is None else min(T - 1, i + every)
            with torch.inference_mode():
                _advance_all(shards, block, seq, i, stop)
                i = stop
                if i == T - 1:
                    seq = block.permute(seq, 0).contiguous()  # back to natural order
                    natural = seq
                    if check_finite and not bool(torch.isfinite(seq).all()):
                        raise FloatingPointError(OVERFLOW_MESSAGE)
                else:
                    natural = block.permute(seq, 0)
                latent = model.unpatchify(natural.transpose(0, 1).to(out_dtype))
            yield Frame(stage, k, i + 1, T, latent)
        if T == 1:
            yield Frame(stage, k, 1, T, model.unpatchify(seq.transpose(0, 1).to(out_dtype)))


def reverse(
    model: TarFlow,
    z: torch.Tensor,
    y: torch.Tensor | None = None,
    guidance: Guidance = Guidance(),
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Invert the flow from the latent z (B, T, D); returns images (B, C, H, W)."""
    return _last(reverse_stream(model, z, y, guidance, dtype=dtype)).latent


def denoise(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None = None,
            sigma: float | None = None) -> torch.Tensor:
    """One score step x + sigma^2 * grad_x log p(x) per image (Tweedie's formula).

    ``sigma`` defaults to the model's training noise level. Each image's result depends only on
    that image (the gradient of the sum of per-image log-densities).
    """
    from tarflow.likelihood import log_prob

    sigma = model.noise_std if sigma is None else float(sigma)
    if sigma < 0:
        raise ValueError("sigma must be non-negative")
    x = x.detach().to(model.var.dtype)
    if sigma == 0:
        return x.clone()
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob(model, x, y).sum(), [x])
    return (x + sigma**2 * grad).detach()


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two latents. Gaussian latents concentrate near a sphere;
    a straight line between two of them cuts through its inside (too small |z|: washed-out images)."""
    af, bf = a.flatten(), b.flatten()
    cos = torch.clamp(af @ bf / (af.norm() * bf.norm()), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) < 1e-4:
        return torch.lerp(a, b, t)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


# ----------------------------------------------------------------------------------------------
# The friendly layer: seeds, class names, recommended settings, output formats.


@dataclass
class Samples:
    """Images in [-1, 1] (B, C, H, W); ``raw`` are the samples before denoising (or the same
    tensor when denoising is off); ``labels`` the class each image was conditioned on (-1: none)."""

    images: torch.Tensor
    raw: torch.Tensor
    labels: torch.Tensor

    def uint8(self, which: str = "images") -> torch.Tensor:
        """(B, H, W, C) uint8 of the denoised ("images") or raw ("raw") samples."""
        return to_uint8(getattr(self, which))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (B, C, H, W) -> uint8 (B, H, W, C); non-finite values become 0."""
    x = torch.nan_to_num(x.detach().float().cpu(), nan=-1.0, posinf=1.0, neginf=-1.0)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def resolve_labels(model: TarFlow, classes: int | str | Sequence[int | str] | None, num: int) -> torch.Tensor:
    """Class names or indices (one, or several cycled over the images) -> labels (num,), -1 for none."""
    if classes is None or (isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) == 0):
        return torch.full((num,), -1, dtype=torch.long)
    if not model.num_classes:
        raise ValueError("this model is unconditional: it takes no classes")
    items = [classes] if isinstance(classes, (int, str)) else list(classes)
    labels = []
    for c in items:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in model.class_names:
                raise ValueError(f"unknown class {c!r}; this model knows: {', '.join(model.class_names)}")
            labels.append(model.class_names.index(c))
        else:
            c = int(c)
            if not -1 <= c < model.num_classes:
                raise ValueError(f"class index {c} is out of range 0..{model.num_classes - 1}")
            labels.append(c)
    return torch.tensor([labels[i % len(labels)] for i in range(num)], dtype=torch.long)


@dataclass(frozen=True)
class SampleSettings:
    """Everything that decides a batch of samples besides the model."""

    num: int = 16
    classes: int | str | Sequence[int | str] | None = None
    seed: int = 0
    guidance: float | None = None  # None: the model's recommended value (or 0)
    guide_what: str = "ab"
    attn_temp: float | None = None
    annealed: bool = False
    temperature: float | None = None  # prior temperature, z ~ N(0, T^2); None: the model's recommended (or 1)
    denoise: bool = True
    sigma: float | None = None  # None: the model's training noise level

    def guidance_for(self, model: TarFlow) -> Guidance:
        rec = model.sampling
        scale = rec.get("guidance", 0.0) if self.guidance is None else self.guidance
        temp = rec.get("attn_temp", 1.0) if self.attn_temp is None else self.attn_temp
        if scale < 0:
            raise ValueError("guidance must be non-negative")
        return Guidance(float(scale), self.guide_what, float(temp), self.annealed)

    def temperature_for(self, model: TarFlow) -> float:
        return float(model.sampling.get("temperature", 1.0) if self.temperature is None else self.temperature)


def prior_noise(model: TarFlow, num: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """Latent noise (num, T, D) drawn on the CPU from ``seed``, so results match across devices."""
    if num < 1:
        raise ValueError("number of images must be at least 1")
    if temperature <= 0:
        raise ValueError("prior temperature must be positive")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(num, model.num_tokens, model.token_dim, generator=g) * temperature


def sample_stream(
    model: TarFlow, settings: SampleSettings = SampleSettings(), every: int | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[Frame | Samples]:
    """Frames as the flow inverts, then one final Samples (denoised if asked)."""
    labels = resolve_labels(model, settings.classes, settings.num)
    guidance = settings.guidance_for(model)
    z = prior_noise(model, settings.num, settings.seed, settings.temperature_for(model))
    device = model.var.device
    y = labels.to(device) if model.num_classes else None
    frame = None
    for frame in reverse_stream(model, z, y, guidance, every=every, dtype=dtype, check_finite=True):
        yield frame
    assert frame is not None
    raw = frame.latent  # finite: checked at every block's end
    images = denoise(model, raw, y, settings.sigma) if settings.denoise else raw
    yield Samples(images=images.cpu(), raw=raw.cpu(), labels=labels)


def sample(model: TarFlow, settings: SampleSettings = SampleSettings(), dtype: torch.dtype | None = None) -> Samples:
    """Draw samples; see SampleSettings."""
    return _last(sample_stream(model, settings, dtype=dtype))
