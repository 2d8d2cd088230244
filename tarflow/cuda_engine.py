"""A token step with fixed shapes, for GPUs: captured once per block as a CUDA graph and replayed.

On a GPU a token step of the sequential inverse is a few dozen small kernels; launching them costs
more than running them. Here every tensor a step touches has a fixed shape and address: the token
index is a one-element tensor on the device, attention reads the whole static key/value cache
with the positions after the current token masked out, and the step advances the index itself.
So one step can be captured as a CUDA graph and the T-1 steps of a block replayed without the CPU
in the loop. Both guidance passes run as one batch of 2B rows. Matrix products run in ``dtype``
(bf16 by default on CUDA); normalisation, softmax, the affine update x = z exp(a) + b and the
token sequence stay in float32.

Without CUDA the same step runs eagerly (one step at a time), which is how its arithmetic is
tested on CPUs against ``MetaBlock.reverse``. The graph capture itself needs a GPU:
benchmarks/gpu_check.sh runs those tests and the timings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tarflow.engine import _guide_mask, _input_table
from tarflow.model import Guidance, MetaBlock


class StaticBlock:
    """One block's weights (transposed, in the product dtype), its static cache and buffers, and
    the step's input and output: the token sequence ``tokens`` (T, B, D, float32) and ``pos``."""

    def __init__(self, block: MetaBlock, y: Tensor | None, batch: int, guidance: Guidance, dtype: torch.dtype):
        device = block.proj_in.weight.device
        self.dtype, self.guided, self.nvp = dtype, guidance.active, bool(block.nvp)
        self.T, self.D = block.pos_embed.shape[0], block.in_dim
        self.batch, self.rows = batch, (2 * batch if guidance.active else batch)
        first = block.attn_blocks[0].attention
        self.heads, self.hd = first.num_heads, first.head_dim
        self.eps = first.norm.eps
        fp32 = torch.float32 if dtype != torch.float64 else torch.float64  # float64 only for tests
        self.fp32 = fp32

        def w(t: Tensor) -> Tensor:
            return t.detach().to(dtype).t().contiguous()

        def f(t: Tensor) -> Tensor:
            return t.detach().to(fp32)

        self.table = _input_table(block, y, batch, self.guided).to(fp32)  # (T, passes, B, W)
        self.in_w = w(block.proj_in.weight)
        self.layers = []
        for layer in block.attn_blocks:
            att, mlp = layer.attention, layer.mlp
            qkv_w, qkv_b = att.qkv.weight.detach().clone(), att.qkv.bias.detach().clone()
            width = att.num_heads * att.head_dim
            qkv_w[:width] *= att.head_dim**-0.5  # the softmax scale folded into the queries
            qkv_b[:width] *= att.head_dim**-0.5
            self.layers.append((f(att.norm.weight), f(att.norm.bias), w(qkv_w), f(qkv_b), w(att.proj.weight),
                                f(att.proj.bias), f(mlp.norm.weight), f(mlp.norm.bias), w(mlp.main[0].weight),
                                f(mlp.main[0].bias), w(mlp.main[2].weight), f(mlp.main[2].bias)))
        self.out_w, self.out_b = w(block.proj_out.weight), f(block.proj_out.bias)
        L, RH = len(self.layers), self.rows * self.heads
        self.keys = torch.zeros(L, RH, self.T, self.hd, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.score_scale = torch.ones(RH, 1, 1, device=device, dtype=fp32)
        if self.guided and guidance.attn_temp != 1.0:
            self.score_scale[batch * self.heads :] = 1.0 / guidance.attn_temp
        weights = [guidance.weight(i, self.T) for i in range(self.T)] if self.guided else [0.0] * self.T
        self.guide_weights = torch.tensor(weights, device=device, dtype=fp32)
        mask = _guide_mask(block, guidance, fp32) if self.guided else None
        self.guide_mask = torch.ones(block.proj_out.out_features, device=device, dtype=fp32) if mask is None else mask
        self.positions = torch.arange(self.T, device=device)
        self.pos = torch.zeros(1, device=device, dtype=torch.long)
        self.tokens = torch.zeros(self.T, batch, self.D, device=device, dtype=fp32)

    def step(self) -> None:
        """Token pos + 1 of ``tokens`` from tokens 0..pos; then pos += 1. Fixed shapes only."""
        pos, R, B = self.pos, self.rows, self.batch
        x = self.tokens.index_select(0, pos)[0]  # (B, D)
        h = (self.table.index_select(0, pos)[0] + (x.to(self.dtype) @ self.in_w).to(self.fp32).unsqueeze(0))
        h = h.reshape(R, -1)
        hidden_mask = self.positions > pos  # keys after the current token
        for j, (n1w, n1b, qkv_w, qkv_b, pw, pb, n2w, n2b, f1w, f1b, f2w, f2b) in enumerate(self.layers):
            n = F.layer_norm(h, [h.shape[1]], n1w, n1b, self.eps).to(self.dtype)
            qkv = (n @ qkv_w).to(self.fp32) + qkv_b
            q, k, v = qkv.view(R, 3, self.heads, self.hd).transpose(0, 1).reshape(3, R * self.heads, 1, self.hd)
            self.keys[j].index_copy_(1, pos, k.to(self.dtype))
            self.values[j].index_copy_(1, pos, v.to(self.dtype))
            scores = (q.to(self.dtype) @ self.keys[j].transpose(1, 2)).to(self.fp32) * self.score_scale
            attn = torch.softmax(scores.masked_fill(hidden_mask, float("-inf")), dim=-1)
            o = (attn.to(self.dtype) @ self.values[j]).view(R, -1)
            h = h + (o @ pw).to(self.fp32) + pb
            n = F.layer_norm(h, [h.shape[1]], n2w, n2b, self.eps).to(self.dtype)
            hid = F.gelu((n @ f1w).to(self.fp32) + f1b)
            h = h + (hid.to(self.dtype) @ f2w).to(self.fp32) + f2b
        out = (h.to(self.dtype) @ self.out_w).to(self.fp32) + self.out_b
        if self.guided:
            weight = self.guide_weights.index_select(0, pos)
            out = torch.lerp(out[B:], out[:B], 1.0 + weight * self.guide_mask)
        nxt = pos + 1
        z = self.tokens.index_select(0, nxt)[0]
        if self.nvp:
            x_new = z * torch.exp(out[:, : self.D]) + out[:, self.D :]
        else:
            x_new = z + out
        self.tokens.index_copy_(0, nxt, x_new.unsqueeze(0))
        self.pos.add_(1)


class StaticInverter:
    """The fixed-shape counterpart of :class:`tarflow.engine.Inverter` (same ``advance``). With
    ``graphs`` (default: on CUDA) each block's step is captured once as a CUDA graph and replayed."""

    def __init__(self, batch: int, y: Tensor | None, guidance: Guidance, device: torch.device,
                 dtype: torch.dtype | None = None, graphs: bool | None = None):
        self.batch, self.y, self.guidance = batch, y, guidance
        self.dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.graphs = device.type == "cuda" if graphs is None else graphs
        self.block: MetaBlock | None = None
        self.state: StaticBlock | None = None
        self.graph = None

    def advance(self, block: MetaBlock, seq: Tensor, start: int, stop: int) -> None:
        """Compute tokens start+1..stop of ``seq`` (T, B, D, in ``block``'s order) in place."""
        with torch.inference_mode():
            if self.block is not block:
                self.state = StaticBlock(block, self.y, self.batch, self.guidance, self.dtype)
                self.block, self.graph = block, None
            s = self.state
            assert s is not None
            s.tokens.copy_(seq)
            s.pos.fill_(start)
            steps = stop - start
            if self.graphs and steps > 0:
                if self.graph is None:  # the first step runs for real and warms up; then capture
                    s.step()
                    steps -= 1
                    self.graph = _capture(s)
                for _ in range(steps):
                    self.graph.replay()
            else:
                for _ in range(steps):
                    s.step()
            seq.copy_(s.tokens.to(seq.dtype))


def _capture(state: StaticBlock):
    """A CUDA graph of one step (recorded, not run: capture executes nothing)."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        pos = state.pos.clone()
        tokens = state.tokens.clone()
        state.step()  # a warm-up step on the side stream, as capture wants; undone below
        state.pos.copy_(pos)
        state.tokens.copy_(tokens)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        state.step()
    return graph
