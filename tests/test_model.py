"""The flow itself: exact inverse, log-determinant, causality, state-dict layout."""

import math

import pytest
import torch
from helpers import images, make_model

from tarflow import Guidance, TarFlow
from tarflow.model import Architecture


@pytest.mark.parametrize("nvp", [True, False])
@pytest.mark.parametrize("num_blocks", [1, 2, 3])
def test_reverse_inverts_forward_fp32(nvp, num_blocks):
    model = make_model(nvp=nvp, num_blocks=num_blocks, num_classes=3)
    x = images(model, n=4)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        z, outputs, _ = model(x, y)
        # reverse() expects standard-normal noise and applies the prior variance itself.
        back = model.reverse(z / model.var.sqrt(), y)
    assert len(outputs) == num_blocks
    assert not torch.allclose(model.unpatchify(z), x, atol=1e-2)  # the flow does something
    torch.testing.assert_close(back, x, atol=2e-5, rtol=0)


def test_reverse_inverts_forward_rgb_fp64_to_rounding():
    model = make_model(in_channels=3, img_size=8, patch_size=4, num_blocks=4, dtype=torch.float64)
    x = images(model, n=2)
    with torch.no_grad():
        z, _, _ = model(x)
        back = model.reverse(z)
    assert (back - x).abs().max().item() < 1e-12


def _flat_forward(model, x_flat, shape):
    z, _, _ = model(x_flat.view(shape))
    return z.reshape(-1)


@pytest.mark.parametrize("nvp", [True, False])
def test_logdet_matches_autograd_jacobian(nvp):
    model = make_model(nvp=nvp, img_size=4, patch_size=2, num_blocks=3, dtype=torch.float64)
    x = images(model, n=1)
    jac = torch.autograd.functional.jacobian(lambda v: _flat_forward(model, v, x.shape), x.reshape(-1))
    _, logabsdet = torch.linalg.slogdet(jac)
    _, _, logdets = model(x)
    # The reference reports the log-determinant per dimension (a mean over tokens and dims).
    torch.testing.assert_close(logdets[0] * model.num_dims, logabsdet, atol=1e-10, rtol=1e-10)
    if not nvp:
        assert abs(logabsdet.item()) < 1e-10


@pytest.mark.parametrize("flip", [False, True])
def test_block_is_causal_in_its_own_order(flip):
    model = make_model(num_blocks=2, num_classes=2, dtype=torch.float64)
    block = model.blocks[int(flip)]
    assert block.flip == flip
    x = model.patchify(images(model, n=2))
    y = torch.tensor([0, 1])
    z, a = block(x, y)
    T = x.shape[1]
    for t in range(T):
        x2 = block.permute(x).clone()
        x2[:, t:] += torch.randn_like(x2[:, t:])  # change tokens >= t (block order)
        z2, a2 = block(block.permute(x2), y)
        # transform parameters of token t use only tokens < t; outputs < t are untouched
        torch.testing.assert_close(block.permute(a2)[:, : t + 1], block.permute(a)[:, : t + 1], atol=0, rtol=0)
        torch.testing.assert_close(block.permute(z2)[:, :t], block.permute(z)[:, :t], atol=0, rtol=0)
        if t < T - 1:
            assert not torch.allclose(block.permute(a2)[:, t + 1], block.permute(a)[:, t + 1])


def test_state_dict_has_the_reference_layout():
    model = TarFlow(1, 8, 2, 64, 2, 2, nvp=True, num_classes=3)
    keys = set(model.state_dict())
    expected = {"var"}
    for k in range(2):
        p = f"blocks.{k}."
        expected |= {p + n for n in ["proj_in.weight", "proj_in.bias", "pos_embed", "class_embed",
                                     "proj_out.weight", "proj_out.bias", "attn_mask"]}
        for j in range(2):
            q = f"{p}attn_blocks.{j}."
            for n in ["attention.norm", "attention.qkv", "attention.proj", "mlp.norm", "mlp.main.0", "mlp.main.2"]:
                expected |= {f"{q}{n}.weight", f"{q}{n}.bias"}
    assert keys == expected
    sd = model.state_dict()
    assert sd["blocks.0.class_embed"].shape == (3, 1, 64)
    assert sd["blocks.1.pos_embed"].shape == (16, 64)
    assert sd["blocks.0.attn_blocks.0.attention.qkv.weight"].shape == (192, 64)
    assert sd["var"].shape == (16, 4)
    assert torch.equal(sd["blocks.0.attn_mask"], torch.tril(torch.ones(16, 16)))


def test_fresh_model_is_identity_and_loss_is_gaussian():
    model = TarFlow(1, 8, 2, 32, 2, 1, head_dim=16)
    x = images(model)
    z, _, logdets = model(x)
    torch.testing.assert_close(model.unpatchify(z), x)
    assert torch.equal(logdets, torch.zeros(3))
    torch.testing.assert_close(model.get_loss(z, logdets), 0.5 * x.pow(2).mean())


def test_dropped_label_uses_mean_class_embedding():
    model = make_model(num_classes=3)
    x = images(model, n=2)
    z_none, _, _ = model(x, None)
    z_drop, _, _ = model(x, torch.tensor([-1, -1]))
    z_mix, _, _ = model(x, torch.tensor([-1, 2]))
    z_two, _, _ = model(x, torch.tensor([2, 2]))
    torch.testing.assert_close(z_drop, z_none)
    torch.testing.assert_close(z_mix[0], z_none[0])
    torch.testing.assert_close(z_mix[1], z_two[1])


def test_bad_image_shape_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="expected images of shape"):
        model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        TarFlow(1, 9, 2, 32, 1, 1)
    assert math.isclose(model.num_dims, 64)


def test_encode_is_the_standard_normal_latent_that_reverse_inverts():
    torch.manual_seed(0)
    model = TarFlow(1, 8, 4, 32, 2, 1, nvp=False, num_classes=3, head_dim=16).double().eval()
    model.var.copy_(torch.rand_like(model.var) + 0.5)  # a VP prior with unequal variances
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 2])
    z = model.encode(x, y)
    raw, _, _ = model(x, y)
    torch.testing.assert_close(z * model.var.sqrt(), raw)
    torch.testing.assert_close(model.reverse(z, y), x)


GUIDANCE_KINDS = [Guidance(), Guidance(1.5), Guidance(2.0, "a", annealed=True), Guidance(1.0, "b", 0.5),
                  Guidance(0.7, "ab", 1.5, True)]


@pytest.mark.parametrize("guidance", GUIDANCE_KINDS, ids=str)
@pytest.mark.parametrize("nvp", [True, False])
def test_block_reverse_matches_the_transformer_run_on_its_result(guidance, nvp):
    """Token by token with caches, MetaBlock.reverse must produce an x whose every token t is
    z_t exp(a_t) + b_t for the (guided) a, b that the uncached Transformer reads off x itself."""
    model = make_model(nvp=nvp, num_blocks=2, num_classes=3, dtype=torch.float64)
    block = model.blocks[1]  # a flipped block
    z = torch.randn(3, model.num_tokens, model.token_dim, generator=torch.Generator().manual_seed(4)).double()
    y = torch.tensor([0, 2, -1])
    with torch.no_grad():
        x = block.reverse(z, y, guidance)
        xs, zs = block.permute(x), block.permute(z)
        pos = block.permute(block.pos_embed, 0)
        a, b = block._scale_and_shift(block.transformer(xs, pos, y))
        if guidance.active:
            a_weak, b_weak = block._scale_and_shift(block.transformer(xs, pos, None, guidance.attn_temp))
            T = model.num_tokens
            w = torch.tensor([guidance.weight(t, T) for t in range(T)], dtype=torch.float64).view(1, T, 1)
            a = a + w * (a - a_weak) if "a" in guidance.what else a
            b = b + w * (b - b_weak) if "b" in guidance.what else b
    # the output at token t - 1 transforms token t; token 0 passes unchanged
    want = torch.cat([zs[:, :1], zs[:, 1:] * torch.exp(a[:, :-1]) + b[:, :-1]], dim=1)
    torch.testing.assert_close(xs, want, atol=1e-12, rtol=1e-12)
    if not guidance.active:  # and forward undoes it
        torch.testing.assert_close(block(x, y)[0], z, atol=1e-12, rtol=1e-12)


def test_architecture_is_the_one_list_of_fields():
    fields = Architecture.field_names()
    model = make_model(num_classes=3)
    assert list(model.config)[: len(fields)] == fields
    assert all(getattr(model, f) == getattr(model.architecture, f) for f in fields)
    assert TarFlow(**model.config).config == model.config
    with pytest.raises(TypeError):
        TarFlow(1, 8, 2, 32, 2, 1, widht=3)
