"""The fast inverse of a flow block: the products of ``MetaBlock.reverse``, arranged for speed.

It computes what ``MetaBlock.reverse`` computes (tests hold it to that, in float64 to rounding)
and changes only how: both guidance passes run as one batch of 2B rows; each layer's key/value
cache is allocated once per call, at full length, and keys and values are written straight into
it; weights are pre-arranged (transposed, the softmax scale folded into the queries) so that a
token step is a few products into reused buffers.

``token_step`` is the one definition of a step. On a CPU in float32/float64 it runs compiled by
TorchScript, which needs no GIL: the rows of a batch are then split into CPU_SHARDS shards that
are inverted at the same time on worker threads of one intra-op thread each (the products are too
small for threads inside one product to pay, but whole shards run side by side; see
benchmarks/sampling.py). Elsewhere (CUDA, MPS, bf16) the same function runs as plain PyTorch.

This file has no ``from __future__ import annotations``: TorchScript reads the annotations.
"""

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tarflow.model import AttentionBlock, Guidance, MetaBlock

# USE_SCRIPTED_LOOP = False runs token_step as plain PyTorch on CPUs too (for comparisons).
USE_SCRIPTED_LOOP = True
CPU_SHARDS = 2


class LayerWeights(NamedTuple):
    """One Transformer layer as a token step uses it: every matrix transposed (rows @ weight),
    the softmax scale folded into the query projection."""

    norm1_weight: Tensor
    norm1_bias: Tensor
    query_weight: Tensor
    query_bias: Tensor
    key_weight: Tensor
    key_bias: Tensor
    value_weight: Tensor
    value_bias: Tensor
    proj_weight: Tensor
    proj_bias: Tensor
    norm2_weight: Tensor
    norm2_bias: Tensor
    fc1_weight: Tensor
    fc1_bias: Tensor
    fc2_weight: Tensor
    fc2_bias: Tensor


class Buffers(NamedTuple):
    """Work buffers that every step reuses: they stay hot in cache and cost no allocations."""

    h: Tensor  # (R, W): the residual stream of both passes, updated in place
    projected: Tensor  # (B, W): the step's input projection, shared by both passes
    query: Tensor  # (R, heads * hd)
    attended: Tensor  # (R * heads, 1, hd)
    hidden: Tensor  # (R, MLP width)
    out: Tensor  # (R, 2D or D)
    scores: Tensor  # (R * heads * T,): token i's scores are the first R * heads * (i + 1) values


class BlockState(NamedTuple):
    """Everything a token step reads, for one block and one call (the rows of one shard)."""

    table: Tensor  # (T, passes, B, W): position + input bias + class vector, per pass
    in_weight: Tensor  # (D, W)
    layers: list[LayerWeights]
    out_weight: Tensor  # (W, 2D or D)
    out_bias: Tensor
    cache: Tensor  # (layers, T, 2, R, heads * hd): every token's keys and values
    buffers: Buffers
    score_scale: Tensor | None  # (R * heads, 1, 1): 1 / attn_temp on the weak pass's rows
    guide_weights: list[float]  # per step; empty when unguided
    guide_mask: Tensor | None  # the output columns that guidance acts on; None: all of them
    heads: int
    eps: float
    nvp: bool
    low_precision: bool  # bf16/fp16: normalisation, softmax and exp in float32, as autocast would


def _norm(h: Tensor, weight: Tensor, bias: Tensor, eps: float, low_precision: bool) -> Tensor:
    if low_precision:
        return F.layer_norm(h.float(), [h.shape[1]], weight.float(), bias.float(), eps).to(h.dtype)
    return F.layer_norm(h, [h.shape[1]], weight, bias, eps)


def _softmax(scores: Tensor, low_precision: bool) -> Tensor:
    if low_precision:
        return torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


def token_step(seq: Tensor, i: int, s: BlockState) -> None:
    """Given tokens 0..i of ``seq`` (T, B, D) in block order, compute token i + 1 in place.

    One step of ``MetaBlock.reverse`` for both passes at once (rows :B conditional, B: weak):
    each line is one or two kernels, with no re-arranging of weights or cache.
    """
    buf = s.buffers
    h = buf.h
    B, R, width = buf.projected.shape[0], h.shape[0], h.shape[1]
    rh, hd = buf.attended.shape[0], buf.attended.shape[2]
    torch.add(s.table[i], torch.mm(seq[i], s.in_weight, out=buf.projected), out=h.view(-1, B, width))
    for j, w in enumerate(s.layers):
        cache = s.cache[j]
        n = _norm(h, w.norm1_weight, w.norm1_bias, s.eps, s.low_precision)
        slot = cache[i]  # token i's keys and values (2, R, heads * hd)
        torch.addmm(w.key_bias, n, w.key_weight, out=slot[0])
        torch.addmm(w.value_bias, n, w.value_weight, out=slot[1])
        q = torch.addmm(w.query_bias, n, w.query_weight, out=buf.query).view(rh, 1, hd)
        keys = cache[: i + 1, 0].view(i + 1, rh, hd).permute(1, 2, 0)  # strided views, no copy
        values = cache[: i + 1, 1].view(i + 1, rh, hd).transpose(0, 1)
        scores = torch.bmm(q, keys, out=buf.scores[: rh * (i + 1)].view(rh, 1, i + 1))
        score_scale = s.score_scale
        if score_scale is not None:
            scores = scores * score_scale
        o = torch.bmm(_softmax(scores, s.low_precision), values, out=buf.attended).view(R, -1)
        # residual products accumulate into h in place; the bias follows (no bias copy)
        h.addmm_(o, w.proj_weight).add_(w.proj_bias)
        n = _norm(h, w.norm2_weight, w.norm2_bias, s.eps, s.low_precision)
        h.addmm_(F.gelu(torch.addmm(w.fc1_bias, n, w.fc1_weight, out=buf.hidden)), w.fc2_weight).add_(w.fc2_bias)
    out = torch.addmm(s.out_bias, h, s.out_weight, out=buf.out)
    if R != B:  # guided: out <- out + w (out - out_weak), on the masked columns
        weight = s.guide_weights[i]
        mask = s.guide_mask
        if mask is None:
            out = torch.lerp(out[B:], out[:B], 1.0 + weight)
        else:
            out = torch.lerp(out[B:], out[:B], 1.0 + weight * mask)
    z_next = seq[i + 1]
    if s.nvp:  # x = z exp(a) + b
        D = seq.shape[2]
        scale = torch.exp(out[:, :D].float()).to(out.dtype) if s.low_precision else torch.exp(out[:, :D])
        torch.addcmul(out[:, D:], z_next, scale, out=z_next)
    else:
        z_next.add_(out)


def token_steps(seq: Tensor, start: int, stop: int, s: BlockState) -> None:
    """Compute tokens start + 1 .. stop of ``seq`` (T, B, D) in place."""
    for i in range(start, stop):
        token_step(seq, i, s)


_lock = threading.Lock()
_scripted: list = []  # [token_steps compiled by TorchScript, or None when it cannot be compiled]
_pool: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked child starts its own workers


def scripted_steps():
    """``token_steps`` compiled by TorchScript (on first use); None if TorchScript cannot compile
    it or USE_SCRIPTED_LOOP is off."""
    if not USE_SCRIPTED_LOOP:
        return None
    with _lock:
        if not _scripted:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch 2.13 marks TorchScript as deprecated
                    _scripted.append(torch.jit.script(token_steps))
            except Exception:  # noqa: BLE001 - any failure means: run the steps as plain PyTorch
                _scripted.append(None)
        return _scripted[0]


def _layer_weights(layer: AttentionBlock, dtype: torch.dtype) -> LayerWeights:
    att, mlp = layer.attention, layer.mlp
    width = att.num_heads * att.head_dim
    w_qkv = att.qkv.weight.detach().clone()
    b_qkv = att.qkv.bias.detach().clone()
    w_qkv[:width] *= att.head_dim**-0.5
    b_qkv[:width] *= att.head_dim**-0.5

    def cast(t: Tensor) -> Tensor:
        return t.detach().to(dtype)

    return LayerWeights(
        cast(att.norm.weight), cast(att.norm.bias),
        cast(w_qkv[:width]).t(), cast(b_qkv[:width]),
        cast(w_qkv[width : 2 * width]).t(), cast(b_qkv[width : 2 * width]),
        cast(w_qkv[2 * width :]).t(), cast(b_qkv[2 * width :]),
        cast(att.proj.weight).t(), cast(att.proj.bias),
        cast(mlp.norm.weight), cast(mlp.norm.bias),
        cast(mlp.main[0].weight).t(), cast(mlp.main[0].bias),
        cast(mlp.main[2].weight).t(), cast(mlp.main[2].bias),
    )


def _input_table(block: MetaBlock, y: Tensor | None, batch: int, guided: bool) -> Tensor:
    """(T, passes, B, W): what each pass adds to a step's input projection. The projected token
    is shared by both passes; position, bias and class vector differ."""
    pos = block.permute(block.pos_embed.detach(), 0) + block.proj_in.bias.detach()
    T = pos.shape[0]
    classes = [block.class_vector(y, batch)] + ([block.class_vector(None, batch)] if guided else [])
    table = []
    for c in classes:
        extra = pos[:, None, :].expand(T, batch, -1)
        if c is not None:
            extra = extra + c.detach().view(1, batch, -1)
        table.append(extra)
    return torch.stack(table, dim=1)


def _guide_mask(block: MetaBlock, guidance: Guidance, dtype: torch.dtype) -> Tensor | None:
    """1 on the output columns guidance acts on (a: the first D, b: the last D; VP mode has only
    b), 0 elsewhere; None when that is every column."""
    out_dim, D = block.proj_out.out_features, block.in_dim
    if block.nvp:
        mask = torch.zeros(out_dim, device=block.proj_out.weight.device, dtype=dtype)
        if "a" in guidance.what:
            mask[:D] = 1
        if "b" in guidance.what:
            mask[D:] = 1
    else:
        mask = torch.full((out_dim,), float("b" in guidance.what), device=block.proj_out.weight.device, dtype=dtype)
    return None if bool(mask.all()) else mask


def _buffers(block: MetaBlock, batch: int, rows: int, heads: int, hd: int, dtype: torch.dtype) -> Buffers:
    width = block.proj_in.out_features
    hidden = block.attn_blocks[0].mlp.main[0].out_features if len(block.attn_blocks) else width
    T = block.pos_embed.shape[0]

    def buffer(*shape: int) -> Tensor:
        return torch.empty(*shape, device=block.proj_in.weight.device, dtype=dtype)

    return Buffers(buffer(rows, width), buffer(batch, width), buffer(rows, heads * hd), buffer(rows * heads, 1, hd),
                   buffer(rows, hidden), buffer(rows, block.proj_out.out_features), buffer(rows * heads * T))


def block_state(block: MetaBlock, y: Tensor | None, batch: int, guidance: Guidance, dtype: torch.dtype) -> BlockState:
    """The weights, cache and buffers with which token_step inverts ``block`` for ``batch`` rows."""
    guided = guidance.active
    rows = 2 * batch if guided else batch
    device = block.proj_in.weight.device
    T = block.pos_embed.shape[0]
    first = block.attn_blocks[0].attention if len(block.attn_blocks) else None
    heads, hd = (first.num_heads, first.head_dim) if first is not None else (1, 1)
    score_scale = None
    if guided and guidance.attn_temp != 1.0:  # the weak pass's attention temperature, on its scores
        score_scale = torch.ones(2, batch * heads, 1, 1, device=device, dtype=dtype)
        score_scale[1] = 1.0 / guidance.attn_temp
        score_scale = score_scale.view(rows * heads, 1, 1)
    return BlockState(
        table=_input_table(block, y, batch, guided).to(dtype),
        in_weight=block.proj_in.weight.detach().to(dtype).t(),
        layers=[_layer_weights(layer, dtype) for layer in block.attn_blocks],
        out_weight=block.proj_out.weight.detach().to(dtype).t(),
        out_bias=block.proj_out.bias.detach().to(dtype),
        cache=torch.empty(len(block.attn_blocks), T, 2, rows, heads * hd, device=device, dtype=dtype),
        buffers=_buffers(block, batch, rows, heads, hd, dtype),
        score_scale=score_scale,
        guide_weights=[guidance.weight(i, T) for i in range(T)] if guided else [],
        guide_mask=_guide_mask(block, guidance, dtype),
        heads=heads,
        eps=first.norm.eps if first is not None else 1e-5,
        nvp=bool(block.nvp),
        low_precision=dtype not in (torch.float32, torch.float64),
    )


def runs_scripted(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether token steps on this device and dtype run compiled by TorchScript."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and scripted_steps() is not None


def shard_rows(batch: int, device: torch.device, dtype: torch.dtype) -> list[tuple[int, int]]:
    """Row ranges of the batch that are inverted concurrently (one range: no concurrency)."""
    n = 1
    if runs_scripted(device, dtype) and torch.get_num_threads() > 1:
        n = max(1, min(CPU_SHARDS, batch))
    edges = [round(k * batch / n) for k in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _one_intra_op_thread() -> None:
    torch.get_num_threads()  # a thread takes up the process default on first use: let that happen now
    torch.set_num_threads(1)  # then this thread's own setting (OpenMP and MKL keep it per thread)


def _worker_pool() -> ThreadPoolExecutor:
    """CPU_SHARDS worker threads, each with one intra-op thread."""
    with _lock:
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


class Shard:
    """Rows lo..hi of a batch and the state that inverts them through the current block."""

    def __init__(self, lo: int, hi: int, y: Tensor | None, guidance: Guidance, dtype: torch.dtype):
        self.lo, self.hi = lo, hi
        self.y = None if y is None else y[lo:hi]
        self.guidance, self.dtype = guidance, dtype
        self.block: MetaBlock | None = None
        self.state: BlockState | None = None

    def advance(self, block: MetaBlock, seq: Tensor, start: int, stop: int) -> None:
        """Compute tokens start+1..stop of this shard's rows of ``seq`` (T, B, D) in place."""
        with torch.inference_mode():  # per thread: workers enter it themselves
            if self.block is not block:  # built where it runs, so a worker does its own setup
                self.state = block_state(block, self.y, self.hi - self.lo, self.guidance, self.dtype)
                self.block = block
            steps = scripted_steps() if runs_scripted(seq.device, self.dtype) else token_steps
            steps(seq[:, self.lo : self.hi], start, stop, self.state)


class Inverter:
    """One call's fast inverse: its batch in shards, each with its own cache and buffers, so that
    calls running at the same time share nothing."""

    def __init__(self, batch: int, y: Tensor | None, guidance: Guidance, device: torch.device, dtype: torch.dtype):
        self.shards = [Shard(lo, hi, y, guidance, dtype) for lo, hi in shard_rows(batch, device, dtype)]

    def advance(self, block: MetaBlock, seq: Tensor, start: int, stop: int) -> None:
        """Compute tokens start+1..stop of ``seq`` (T, B, D, in ``block``'s order) in place;
        several shards run on the worker threads."""
        if len(self.shards) == 1:
            self.shards[0].advance(block, seq, start, stop)
            return
        pool = _worker_pool()
        for job in [pool.submit(s.advance, block, seq, start, stop) for s in self.shards]:
            job.result()
