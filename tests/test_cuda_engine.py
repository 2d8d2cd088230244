"""The fixed-shape token step of tarflow/cuda_engine.py, run eagerly on a CPU, against the plain
inverse (its CUDA-graph replay is checked on a GPU by benchmarks/gpu_check.sh)."""

import pytest
import torch
from helpers import make_model

from tarflow.cuda_engine import StaticInverter
from tarflow.model import Guidance
from tarflow.sampling import _last, reverse_stream

GUIDANCES = [Guidance(), Guidance(1.5, "a"), Guidance(1.5, "b"), Guidance(1.0, "ab", attn_temp=0.5),
             Guidance(2.0, "ab", annealed=True)]


def _invert(model, z, y, guidance, dtype, every=None):
    """reverse_stream's block loop with the static inverter in place of the engine's."""
    import tarflow.sampling as sampling

    original = sampling.Inverter
    sampling.Inverter = lambda b, yy, g, device, dt: StaticInverter(b, yy, g, device, dtype, graphs=False)
    try:
        return _last(reverse_stream(model, z, y, guidance, every=every)).latent
    finally:
        sampling.Inverter = original


@pytest.mark.parametrize("guidance", GUIDANCES, ids=str)
@pytest.mark.parametrize("nvp", [True, False])
def test_static_step_equals_plain_inverse_float64(guidance, nvp):
    model = make_model(nvp=nvp, num_classes=3, num_blocks=2, dtype=torch.float64)
    z = torch.randn(3, model.num_tokens, model.token_dim, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    y = torch.tensor([0, 2, -1])
    want = model.reverse(z, y, guidance.scale, guidance.what, guidance.attn_temp, guidance.annealed)
    got = _invert(model, z, y, guidance, torch.float64, every=5)
    torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-11)


def test_bf16_products_stay_close_and_unconditional_runs():
    model = make_model(nvp=True, num_classes=0, num_blocks=2)
    z = torch.randn(2, model.num_tokens, model.token_dim, generator=torch.Generator().manual_seed(1))
    g = Guidance(1.0, attn_temp=1.5)
    want = model.reverse(z, None, g.scale, g.what, g.attn_temp, g.annealed)
    got32 = _invert(model, z, None, g, torch.float32)
    got16 = _invert(model, z, None, g, torch.bfloat16)
    torch.testing.assert_close(got32, want, atol=1e-5, rtol=1e-5)
    assert got16.dtype == torch.float32 and float((got16 - want).abs().max()) < 0.05
