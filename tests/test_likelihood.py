"""Exact likelihoods, bits/dim, likelihood maps, classification by Bayes' rule."""

import math

import pytest
import torch
from helpers import images, make_model

from tarflow import bits_per_dim, classify, log_prob, nll_map, patch_map
from tarflow.likelihood import class_log_likelihoods, dequantize, nll_terms


def _identity(model):
    for block in model.blocks:
        torch.nn.init.zeros_(block.proj_out.weight)
        torch.nn.init.zeros_(block.proj_out.bias)
    return model


def test_identity_flow_nll_is_the_analytic_gaussian():
    model = _identity(make_model(num_classes=2, dtype=torch.float64))
    x = images(model, n=3)
    want = -torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(-log_prob(model, x), want)


def test_vp_prior_variance_enters_the_density():
    model = _identity(make_model(nvp=False, dtype=torch.float64))
    x = images(model, n=2)
    std = model.unpatchify(model.var.sqrt().expand(2, -1, -1))
    want = torch.distributions.Normal(torch.zeros_like(x), std).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob(model, x), want)


def test_log_prob_matches_change_of_variables_with_autograd():
    model = make_model(img_size=4, patch_size=2, num_blocks=3, num_classes=2, dtype=torch.float64)
    x = images(model, n=1)
    y = torch.tensor([1])
    f = lambda v: model(v.view(x.shape), y)[0].reshape(-1)  # noqa: E731
    z = f(x.reshape(-1))
    _, logabsdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(f, x.reshape(-1)))
    want = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum() + logabsdet
    torch.testing.assert_close(log_prob(model, x, y)[0], want)


@pytest.mark.parametrize("nvp", [True, False])
def test_likelihood_map_sums_to_total_nll(nvp):
    model = make_model(nvp=nvp, in_channels=3, num_blocks=3, num_classes=2, dtype=torch.float64)
    x = images(model, n=2)
    y = torch.tensor([0, 1])
    total_bits = -log_prob(model, x, y) / math.log(2)
    cont = nll_map(model, x, y, dequantized=False)
    assert cont.shape == (2, 8, 8)
    torch.testing.assert_close(cont.sum(dim=(1, 2)), total_bits)
    disc = nll_map(model, x, y)
    torch.testing.assert_close(disc.sum(dim=(1, 2)), bits_per_dim(model, x, y) * model.num_dims)
    patches = patch_map(model, disc)
    assert patches.shape == (2, 4, 4)
    torch.testing.assert_close(patches.sum(dim=(1, 2)), disc.sum(dim=(1, 2)))
    torch.testing.assert_close(patches[:, 1, 2], disc[:, 2:4, 4:6].sum(dim=(1, 2)))
    # the map is not flat: positions differ
    assert cont.std() > 0.01


def test_likelihood_map_puts_each_term_at_its_pixel():
    model = _identity(make_model(in_channels=3, dtype=torch.float64))
    x = images(model, n=1)
    want = (0.5 * x.pow(2) + 0.5 * math.log(2 * math.pi)).sum(dim=1) / math.log(2)
    torch.testing.assert_close(nll_map(model, x, dequantized=False), want)


def test_bits_per_dim_matches_the_reference_evaluation():
    model = make_model(num_classes=3, dtype=torch.float64)
    raw = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    x = dequantize(raw, torch.Generator().manual_seed(0)).double()
    assert x.min() >= -1 and x.max() <= 1
    assert torch.all((x + 1) * 128 - raw.double() >= 0) and torch.all((x + 1) * 128 - raw.double() < 1)
    y = torch.tensor([0, 1, 2, 0])
    # the reference: gaussian log-prob with a -log(128) per dim, NLL per dim minus logdets
    z, _, logdets = model(x, y)
    prior = (-0.5 * (z**2 + math.log(2 * math.pi))).flatten(1).sum(-1) - math.log(128) * z[0].numel()
    want = (-prior / model.num_dims - logdets) / math.log(2)
    torch.testing.assert_close(bits_per_dim(model, x, y), want)


def test_nll_terms_are_per_position():
    model = make_model(num_classes=2)
    x = images(model, n=2)
    terms = nll_terms(model, x)
    assert terms.shape == (2, model.num_tokens, model.token_dim)
    torch.testing.assert_close(terms.sum(dim=(1, 2)), -log_prob(model, x))


def test_classify_is_bayes_rule_and_batch_independent():
    model = make_model(num_classes=4, dtype=torch.float64)
    x = images(model, n=3)
    ll = class_log_likelihoods(model, x, batch_size=5)
    for k in range(4):
        torch.testing.assert_close(ll[:, k], log_prob(model, x, torch.full((3,), k)))
    post = classify(model, x, batch_size=7)
    torch.testing.assert_close(post.sum(dim=1), torch.ones(3, dtype=post.dtype))
    torch.testing.assert_close(post, torch.softmax(ll, dim=1))
    assert post.std(dim=1).min() > 1e-4  # classes really differ
    with pytest.raises(ValueError, match="class-conditional"):
        classify(make_model(), x.float())


def test_dequantize_wants_uint8():
    with pytest.raises(TypeError):
        dequantize(torch.zeros(1, 1, 2, 2))


def test_noise_bits_is_the_gaussian_entropy_in_8bit_bins():
    from tarflow.likelihood import noise_bits

    # std 0.1 on [-1, 1] is 12.8 bins of width 2/256
    assert noise_bits(0.1) == pytest.approx(0.5 * math.log2(2 * math.pi * math.e * 12.8**2))
    assert noise_bits(0.0) == 0.0


@pytest.mark.parametrize("nvp", [True, False])
def test_nll_parts_sum_to_the_total_exactly(nvp):
    """Where the bits go: bin width + prior + each block's -log det = bits/dim, and each part is what
    it says (prior from z, a block's part from its own log-scales)."""
    from tarflow.likelihood import nll_parts

    model = make_model(nvp=nvp, in_channels=3, num_blocks=3, num_classes=2, dtype=torch.float64)
    x, y = images(model, n=4), torch.tensor([0, 1, -1, 1])
    with torch.no_grad():
        parts = nll_parts(model, x, y)
        z, _, logscales = model.trace(x, y)
        total = bits_per_dim(model, x, y)
    assert parts.shape == (4, 2 + model.num_blocks)
    torch.testing.assert_close(parts.sum(dim=1), total, rtol=0, atol=1e-12)
    to_bits = 1 / (model.num_dims * math.log(2))
    torch.testing.assert_close(parts[:, 0], torch.full((4,), 7.0, dtype=torch.float64))  # log2(128)
    prior = -torch.distributions.Normal(0.0, model.var.sqrt()).log_prob(z).sum(dim=(1, 2)) * to_bits
    torch.testing.assert_close(parts[:, 1], prior)
    for k, a in enumerate(logscales):
        want = torch.zeros(4, dtype=torch.float64) if a is None else a.sum(dim=(1, 2)) * to_bits
        torch.testing.assert_close(parts[:, 2 + k], want)
    if nvp:
        assert (parts[:, 2:].abs() > 1e-6).all()  # no block is an identity here
