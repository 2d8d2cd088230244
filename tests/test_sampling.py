"""The fast sampler against the model's plain inverse, streaming, thread safety, denoising, the
friendly API."""

import threading

import pytest
import torch
from helpers import images, make_model

from tarflow import Guidance, SampleSettings, denoise, engine, reverse_stream, sample, sample_stream
from tarflow.sampling import Samples, prior_noise, resolve_labels, reverse, to_uint8

GUIDANCE_CASES = [
    dict(),
    dict(guidance=1.5),
    dict(guidance=1.5, guide_what="a"),
    dict(guidance=1.5, guide_what="b"),
    dict(guidance=2.0, annealed_guidance=True),
    dict(guidance=1.0, attn_temp=0.5),
    dict(guidance=0.7, attn_temp=1.5, guide_what="b", annealed_guidance=True),
]


def _noise(model, n=5, seed=3):
    return torch.randn(n, model.num_tokens, model.token_dim, generator=torch.Generator().manual_seed(seed))


def fast(model, z, y=None, guidance=0.0, guide_what="ab", attn_temp=1.0, annealed_guidance=False):
    """The fast sampler, called as TarFlow.reverse (the plain inverse) is."""
    return reverse(model, z, y, Guidance(guidance, guide_what, attn_temp, annealed_guidance))


# In float64 the fast sampler and the plain inverse agree to rounding: a re-ordered sum shows up near
# 1e-15, a wrong formula far above the tolerance.
F64 = dict(atol=1e-11, rtol=1e-11)


@pytest.fixture(params=["scripted", "python"])
def loop(request, monkeypatch):
    """Run a test with the token steps compiled by TorchScript (sharded over worker threads on a
    CPU with 2+ threads) and again with the same steps run as plain PyTorch."""
    monkeypatch.setattr(engine, "USE_SCRIPTED_LOOP", request.param == "scripted")
    if request.param == "scripted":
        assert engine.scripted_steps() is not None
    return request.param


@pytest.fixture
def two_threads():
    """At least two intra-op threads, so that the sampler shards batches over its workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kw", GUIDANCE_CASES)
@pytest.mark.parametrize("nvp", [True, False])
def test_fast_sampler_equals_plain_inverse_conditional(kw, nvp, loop):
    model = make_model(nvp=nvp, num_classes=3, num_blocks=3, dtype=torch.float64)
    z = _noise(model).double()
    y = torch.tensor([0, 1, 2, 0, 1])
    want = model.reverse(z, y, **kw)
    got = fast(model, z, y, **kw)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("kw", [dict(), dict(guidance=1.0, attn_temp=0.5), dict(guidance=2.0, attn_temp=1.5)])
def test_fast_sampler_equals_plain_inverse_unconditional(kw, loop):
    model = make_model(num_classes=0, num_blocks=2, in_channels=3, patch_size=4, dtype=torch.float64)
    z = _noise(model, n=2).double()
    torch.testing.assert_close(fast(model, z, None, **kw), model.reverse(z, None, **kw), **F64)


def test_fast_sampler_matches_plain_inverse_in_float32(loop):
    model = make_model(num_classes=3, num_blocks=4)
    z = _noise(model)
    y = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(fast(model, z, y, guidance=2.0), model.reverse(z, y, guidance=2.0), atol=1e-4,
                               rtol=1e-4)


def test_shards_run_on_workers_and_equal_one_batch(two_threads, monkeypatch):
    model = make_model(num_classes=3, num_blocks=3, dtype=torch.float64)
    z = _noise(model, 5).double()
    y = torch.tensor([0, 1, 2, 0, 1])
    assert engine.shard_rows(5, torch.device("cpu"), torch.float64) == [(0, 2), (2, 5)]
    assert engine.shard_rows(1, torch.device("cpu"), torch.float64) == [(0, 1)]
    assert engine.shard_rows(5, torch.device("cpu"), torch.bfloat16) == [(0, 5)]  # not scripted: no shards
    workers = set()
    advance = engine.Shard.advance

    def spy(self, *args):
        workers.add(threading.current_thread().name)
        return advance(self, *args)

    monkeypatch.setattr(engine.Shard, "advance", spy)
    sharded = fast(model, z, y, guidance=1.5, attn_temp=0.8)
    assert len(workers) == 2 and all(name.startswith("tarflow-sampler") for name in workers)
    monkeypatch.setattr(engine, "CPU_SHARDS", 1)
    workers.clear()
    whole = fast(model, z, y, guidance=1.5, attn_temp=0.8)
    assert workers == {threading.current_thread().name}
    torch.testing.assert_close(sharded, whole, atol=1e-13, rtol=1e-13)


def test_sampler_workers_leave_the_thread_setting_alone(two_threads):
    model = make_model(num_classes=3)
    before = torch.get_num_threads()
    fast(model, _noise(model, 4), torch.tensor([0, 1, 2, 0]), guidance=1.0)
    assert torch.get_num_threads() == before
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # takes up the default
    t.start()
    t.join()
    assert seen == [before]


def _sample_in_child(model, z, y, out):
    out.put(fast(model, z, y, guidance=1.0).numpy())


def test_sharded_sampling_works_in_a_forked_child(two_threads):
    """A forked child inherits the parent's worker pool object but not its threads."""
    import multiprocessing

    model = make_model(num_classes=3)
    z, y = _noise(model, 4), torch.tensor([0, 1, 2, 0])
    want = fast(model, z, y, guidance=1.0)  # the parent's workers exist now
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_sample_in_child, args=(model, z, y, out))
    child.start()
    try:
        got = out.get(timeout=30)  # a child waiting on threads it does not have would hang here
        child.join(timeout=30)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    torch.testing.assert_close(torch.from_numpy(got), want, atol=0, rtol=0)


def test_plain_pytorch_steps_when_torchscript_is_unavailable(monkeypatch):
    def broken(fn):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(engine, "_scripted", [])
    monkeypatch.setattr(torch.jit, "script", broken)
    assert engine.scripted_steps() is None
    model = make_model(num_classes=3, dtype=torch.float64)
    z = _noise(model, 3).double()
    y = torch.tensor([0, 1, 2])
    torch.testing.assert_close(fast(model, z, y, guidance=1.5), model.reverse(z, y, guidance=1.5), **F64)


def test_guidance_actually_changes_samples():
    model = make_model(num_classes=3)
    z = _noise(model)
    y = torch.tensor([0, 1, 2, 0, 1])
    assert not torch.allclose(fast(model, z, y), fast(model, z, y, guidance=1.0), atol=1e-3)
    assert not torch.allclose(fast(model, z, y, guidance=1.0, attn_temp=0.5),
                              fast(model, z, y, guidance=1.0), atol=1e-3)


def test_guidance_zero_equals_unguided_and_input_is_untouched():
    model = make_model(num_classes=3)
    z = _noise(model)
    z_copy = z.clone()
    y = torch.tensor([2, 1, 0, 0, 1])
    unguided = fast(model, z, y)
    for g in [Guidance(0.0), Guidance(0.0, "a", 0.3, True), Guidance(1.0, what="")]:
        torch.testing.assert_close(list(reverse_stream(model, z, y, g))[-1].latent, unguided, atol=0, rtol=0)
    model.reverse(z, y, guidance=1.0)
    assert torch.equal(z, z_copy)


def test_concurrent_sampling_matches_sequential(loop):
    model = make_model(num_classes=3, num_blocks=3)
    jobs = [(_noise(model, 4, seed=s), torch.tensor([s % 3] * 4), Guidance(0.5 * s, attn_temp=1 + 0.1 * s))
            for s in range(4)]
    sequential = [fast(model, z, y, g.scale, g.what, g.attn_temp) for z, y, g in jobs]
    results = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(i):
        z, y, g = jobs[i]
        start.wait()
        for _ in range(3):
            out = fast(model, z, y, g.scale, g.what, g.attn_temp)
        results[i] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, sequential):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_streaming_frames_per_block_and_within_blocks(loop):
    model = make_model(num_classes=3, num_blocks=3)  # 16 tokens per block
    z = _noise(model, 2)
    y = torch.tensor([0, 1])
    frames = list(reverse_stream(model, z, y, Guidance(1.0), every=4))
    # prior sample, then 15 steps per block in chunks of 4 -> 4 frames per block
    assert len(frames) == 1 + 3 * 4
    assert [f.stage for f in frames] == [0] + [1] * 4 + [2] * 4 + [3] * 4
    assert [f.block for f in frames[1:5]] == [2] * 4  # blocks are inverted last to first
    assert [f.tokens for f in frames[1:5]] == [5, 9, 13, 16]
    assert sum(f.block_done for f in frames) == 4
    torch.testing.assert_close(frames[0].latent, model.unpatchify(z))
    torch.testing.assert_close(frames[-1].latent, fast(model, z, y, guidance=1.0), atol=0, rtol=0)
    # inside a block, tokens not yet generated still hold the previous stage's values
    prev, mid = model.patchify(frames[0].latent), model.patchify(frames[1].latent)
    block = model.blocks[2]
    assert torch.equal(block.permute(mid)[:, 5:], block.permute(prev)[:, 5:])
    assert not torch.equal(block.permute(mid)[:, 1:5], block.permute(prev)[:, 1:5])
    # every block's final frame equals the image after inverting that many blocks
    per_block = [f.latent for f in reverse_stream(model, z, y, Guidance(1.0))]
    assert len(per_block) == 4
    torch.testing.assert_close(torch.stack([f.latent for f in frames if f.block_done]), torch.stack(per_block),
                               atol=0, rtol=0)


def test_streaming_does_not_leak_inference_mode():
    model = make_model()
    for _ in reverse_stream(model, _noise(model, 1), every=3):
        assert not torch.is_inference_mode_enabled()
        assert torch.is_grad_enabled()


def test_sampler_errors_are_clear():
    model = make_model(num_classes=3)
    for inverse in (model.reverse, lambda *args: fast(model, *args)):
        with pytest.raises(ValueError, match="latent of shape"):
            inverse(torch.zeros(1, 5, 4))
        with pytest.raises(ValueError, match="labels for"):
            inverse(_noise(model, 2), torch.tensor([0]))
        with pytest.raises(ValueError, match="below 3"):
            inverse(_noise(model, 1), torch.tensor([3]))
    with pytest.raises(ValueError, match="guide_what"):
        Guidance(1.0, what="c")


def test_denoise_identity_flow_is_analytic():
    model = make_model(num_classes=2)
    for block in model.blocks:  # proj_out zero: every block is the identity, z = x
        torch.nn.init.zeros_(block.proj_out.weight)
        torch.nn.init.zeros_(block.proj_out.bias)
    x = images(model, n=3)
    torch.testing.assert_close(denoise(model, x, sigma=0.3), x * (1 - 0.3**2))


def test_denoise_is_per_image_and_matches_reference_formula():
    model = make_model(num_classes=3, dtype=torch.float64)
    x = images(model, n=4)
    y = torch.tensor([0, 1, 2, 1])
    sigma = 0.2
    batch = denoise(model, x, y, sigma)
    for i in range(4):
        torch.testing.assert_close(denoise(model, x[i : i + 1], y[i : i + 1], sigma)[0], batch[i])
    # the reference step: x - (B * N * sigma^2) * grad of the per-dimension mean loss (VP prior var = 1 here)
    xr = x.clone().requires_grad_(True)
    z, _, logdets = model(xr, y)
    (grad,) = torch.autograd.grad(model.get_loss(z, logdets), [xr])
    torch.testing.assert_close(batch, x - x.numel() * sigma**2 * grad)
    assert not torch.allclose(batch, x)


def test_denoise_defaults_to_training_noise():
    model = make_model()
    model.noise_std = 0.15
    x = images(model)
    torch.testing.assert_close(denoise(model, x), denoise(model, x, sigma=0.15))
    torch.testing.assert_close(denoise(model, x, sigma=0.0), x)


def test_sample_is_reproducible_and_labels_follow_classes():
    model = make_model(num_classes=3)
    model.class_names = ["cat", "dog", "fox"]
    s = SampleSettings(num=5, classes=["dog", 2], seed=7, guidance=1.0, sigma=0.1)
    a, b = sample(model, s), sample(model, s)
    assert isinstance(a, Samples)
    assert torch.equal(a.images, b.images)
    assert a.labels.tolist() == [1, 2, 1, 2, 1]
    want = fast(model, prior_noise(model, 5, 7), a.labels, guidance=1.0)
    torch.testing.assert_close(a.raw, want, atol=0, rtol=0)
    torch.testing.assert_close(a.images, denoise(model, want, a.labels, 0.1))
    c = sample(model, SampleSettings(num=5, classes=["dog", 2], seed=8, guidance=1.0))
    assert not torch.equal(a.raw, c.raw)
    u8 = a.uint8()
    assert u8.dtype == torch.uint8 and u8.shape == (5, 8, 8, 1)


def test_sample_uses_recommended_settings():
    model = make_model(num_classes=3)
    model.sampling = {"guidance": 1.5, "attn_temp": 1.0, "temperature": 0.8}
    rec = sample(model, SampleSettings(num=2, classes=0, denoise=False))
    explicit = sample(model, SampleSettings(num=2, classes=0, guidance=1.5, temperature=0.8, denoise=False))
    torch.testing.assert_close(rec.images, explicit.images, atol=0, rtol=0)
    assert torch.equal(rec.images, rec.raw)
    other = sample(model, SampleSettings(num=2, classes=0, guidance=1.5, temperature=1.0, denoise=False))
    assert not torch.allclose(other.images, rec.images)
    model.sampling = {"guidance": 1.5}  # no recommended temperature: 1
    torch.testing.assert_close(sample(model, SampleSettings(num=2, classes=0, denoise=False)).images,
                               other.images, atol=0, rtol=0)


def test_sample_stream_ends_with_samples_and_reports_overflow():
    model = make_model(num_classes=3)
    out = list(sample_stream(model, SampleSettings(num=2, classes=1), every=5))
    assert isinstance(out[-1], Samples) and len(out) == 1 + 2 * 3 + 1
    with torch.no_grad():
        for block in model.blocks:
            block.proj_out.bias[: block.in_dim] = 30.0  # log-scales of 30 per block overflow float32
    with pytest.raises(FloatingPointError, match="lower the guidance"):
        sample(model, SampleSettings(num=1, classes=0, guidance=5.0))
    # it fails at the first block that overflows, before the remaining blocks run
    frames = []
    with pytest.raises(FloatingPointError):
        for f in sample_stream(model, SampleSettings(num=1, classes=0, guidance=5.0), every=5):
            frames.append(f)
    assert frames[0].is_prior and not frames[1].is_prior and max(f.stage for f in frames) == 1


def test_label_resolution():
    model = make_model(num_classes=3)
    model.class_names = ["a", "b", "c"]
    assert resolve_labels(model, None, 3).tolist() == [-1, -1, -1]
    assert resolve_labels(model, [], 2).tolist() == [-1, -1]
    assert resolve_labels(model, "c", 2).tolist() == [2, 2]
    assert resolve_labels(model, ["1", "a"], 3).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="unknown class 'z'"):
        resolve_labels(model, "z", 1)
    with pytest.raises(ValueError, match="out of range"):
        resolve_labels(model, 3, 1)
    with pytest.raises(ValueError, match="unconditional"):
        resolve_labels(make_model(), 0, 1)


def test_to_uint8_handles_range_and_non_finite():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, float("nan")]).view(1, 1, 1, 6)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255, 0]


def test_bf16_sampling_runs_close_to_fp32():
    model = make_model(num_classes=3)
    z = _noise(model, 2)
    y = torch.tensor([0, 1])
    full = fast(model, z, y, guidance=1.0)
    half = list(reverse_stream(model, z, y, Guidance(1.0), dtype=torch.bfloat16))[-1].latent
    assert half.dtype == torch.float32
    err = (half - full).abs()
    assert err.mean() < 0.02 and err.max() < 0.3  # bf16 keeps about 3 significant digits


def test_slerp_keeps_the_norm_between_orthogonal_latents():
    from tarflow.sampling import slerp

    a = torch.zeros(2, 3)
    b = torch.zeros(2, 3)
    a[0, 0], b[1, 2] = 2.0, 2.0
    mid = slerp(a, b, 0.5)
    assert mid.norm().item() == pytest.approx(2.0)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    torch.testing.assert_close(slerp(a, a.clone(), 0.3), a)  # parallel: falls back to a straight line
