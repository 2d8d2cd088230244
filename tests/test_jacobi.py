"""Jacobi (parallel) decoding against the model's plain, token-by-token inverse."""

import pytest
import torch
from helpers import make_model

from tarflow import Guidance, SampleSettings, sample
from tarflow.jacobi import DecodeReport, Jacobi
from tarflow.sampling import _last, reverse_stream

GUIDANCES = [
    Guidance(),
    Guidance(1.5, "a"),
    Guidance(1.5, "b"),
    Guidance(1.5, "ab"),
    Guidance(1.0, "ab", attn_temp=0.5),
    Guidance(2.0, "ab", annealed=True),
    Guidance(0.7, "b", attn_temp=1.5, annealed=True),
]


def _noise(model, n=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.num_tokens, model.token_dim, generator=g, dtype=torch.float64)


def _jacobi(model, z, y, guidance, settings, every=None):
    report = DecodeReport()
    out = _last(reverse_stream(model, z, y, guidance, every=every, jacobi=settings, report=report)).latent
    return out, report


def _plain(model, z, y, g):
    return model.reverse(z, y, g.scale, g.what, g.attn_temp, g.annealed)


@pytest.mark.parametrize("guidance", GUIDANCES, ids=str)
@pytest.mark.parametrize("nvp", [True, False])
def test_jacobi_converged_equals_sequential(guidance, nvp):
    """Conditional model (class labels, one 'no label'): within the tolerance, and to rounding when
    every window runs as many passes as it has tokens."""
    model = make_model(nvp=nvp, num_classes=3, num_blocks=3, dtype=torch.float64)
    z, y = _noise(model), torch.tensor([0, 2, -1])
    want = _plain(model, z, y, guidance)
    exact, report = _jacobi(model, z, y, guidance, Jacobi(tol=0.0))
    torch.testing.assert_close(exact, want, atol=1e-11, rtol=1e-11)
    assert report.passes == {k: [model.num_tokens - 1] for k in range(3)}
    close, report = _jacobi(model, z, y, guidance, Jacobi(tol=1e-9, window=5))
    assert float((close - want).abs().max()) < 1e-7
    assert all(len(v) == 3 for v in report.passes.values())  # 15 input tokens in windows of 5


@pytest.mark.parametrize("guidance", [Guidance(), Guidance(1.0, "ab", attn_temp=0.5),
                                      Guidance(1.2, "a", attn_temp=1.5, annealed=True)], ids=str)
def test_jacobi_unconditional(guidance):
    model = make_model(nvp=True, num_classes=0, num_blocks=2, dtype=torch.float64)
    z = _noise(model)
    want = _plain(model, z, None, guidance)
    got, _ = _jacobi(model, z, None, guidance, Jacobi(tol=1e-10, sequential_first=True))
    assert float((got - want).abs().max()) < 1e-8


def test_tolerance_bounds_the_error_and_saves_passes():
    """A loose tolerance stops early (fewer passes than tokens) and the error grows with it."""
    model = make_model(nvp=True, num_classes=3, num_blocks=2, dtype=torch.float64, scale=0.05)
    z, y, g = _noise(model), torch.tensor([1, 0, 2]), Guidance(1.0)
    want = _plain(model, z, y, g)
    errors, passes = [], []
    for tol in (1e-8, 1e-4, 1e-2):
        got, report = _jacobi(model, z, y, g, Jacobi(tol=tol))
        errors.append(float((got - want).abs().max()))
        passes.append(sum(report.total(k) for k in report.passes))
    assert passes[0] > passes[1] > passes[2]
    assert passes[2] < 2 * (model.num_tokens - 1)
    assert errors[0] < 1e-6 < errors[2] < 0.1


def test_iteration_cap_and_first_block_sequential():
    model = make_model(nvp=True, num_classes=3, num_blocks=3, dtype=torch.float64)
    z, y, g = _noise(model), torch.tensor([1, 0, 2]), Guidance(1.0)
    _, report = _jacobi(model, z, y, g, Jacobi(tol=0.0, window=4, max_iters=2, sequential_first=True))
    assert report.sequential == [2]  # the last block of the model is inverted first
    assert report.passes == {1: [2, 2, 2, 2], 0: [2, 2, 2, 2]}  # 15 inputs: windows 4, 4, 4, 3
    assert "block 2: sequential" in report.summary()


def test_streaming_frames_and_float32_close_to_sequential():
    """Frames come at the same token counts as sequential decoding; in float32 the result stays close."""
    model = make_model(nvp=True, num_classes=3, num_blocks=2)
    z, y, g = _noise(model).float(), torch.tensor([0, 1, 2]), Guidance(1.5)
    seq_frames = list(reverse_stream(model, z, y, g, every=4))
    jac_frames = list(reverse_stream(model, z, y, g, every=4, jacobi=Jacobi(tol=1e-6)))
    assert [(f.stage, f.tokens) for f in jac_frames] == [(f.stage, f.tokens) for f in seq_frames]
    torch.testing.assert_close(jac_frames[-1].latent, seq_frames[-1].latent, atol=1e-4, rtol=1e-4)


def test_sample_api_reports_passes_and_rejects_unknown_decode():
    model = make_model(nvp=True, num_classes=3, num_blocks=2)
    out = sample(model, SampleSettings(num=2, classes=[0, 1], decode="jacobi", jacobi=Jacobi(tol=1e-5),
                                       denoise=False))
    seq = sample(model, SampleSettings(num=2, classes=[0, 1], denoise=False))
    assert out.decode is not None and set(out.decode.passes) == {0, 1}
    assert seq.decode is None
    torch.testing.assert_close(out.images, seq.images, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="decode must be one of"):
        SampleSettings(decode="parallel")
    with pytest.raises(ValueError):
        Jacobi(tol=-1.0)


def test_bf16_jacobi_of_a_float32_model_runs():
    model = make_model(nvp=True, num_classes=3, num_blocks=2)
    z, y = _noise(model, n=2).float(), torch.tensor([0, 1])
    want = _plain(model, z, y, Guidance(1.0))
    got = _last(reverse_stream(model, z, y, Guidance(1.0), dtype=torch.bfloat16, jacobi=Jacobi(tol=1e-2))).latent
    assert got.dtype == torch.float32
    assert float((got - want).abs().max()) < 0.1
