"""The 2D playground's TarFlow: the image model's sequence flow on points of two one-value tokens."""

import copy
import math

import numpy as np
import pytest
import torch
from helpers import images, make_model

from tarflow.likelihood import log_prob
from tarflow.live import PointSettings, PointTrainer, optimizer_step
from tarflow.model import SequenceFlow
from tarflow.points import (
    BOX,
    TARGETS,
    PointFlow,
    density_grid,
    gaussian_nll,
    grid_centres,
    latent_grid_lines,
    make_points,
    points_from_ink,
    warp_stages,
)


def random_point_flow(seed: int = 0, scale: float = 0.1, dtype=torch.float64) -> PointFlow:
    """Every weight random and non-zero, so each block moves its second token."""
    torch.manual_seed(seed)
    model = PointFlow(channels=32, num_blocks=4, layers_per_block=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1 + 0.1 * torch.randn_like(p)) if name.endswith("norm.weight") else scale * torch.randn_like(p))
    return model.to(dtype).eval()


def test_an_image_model_is_patchify_around_the_sequence_flow():
    model = make_model(num_classes=3, num_blocks=3, dtype=torch.float64)
    flow = SequenceFlow(model.num_tokens, model.token_dim, model.channels, model.num_blocks, model.layers_per_block,
                        num_classes=3, head_dim=model.head_dim).to(torch.float64)
    flow.load_state_dict(model.state_dict(), strict=True)  # the same parameter names
    x, y = images(model, n=2), torch.tensor([0, 2])
    z_image, _, logdet_image = model(x, y)
    z_seq, _, logdet_seq = flow(model.patchify(x), y)
    assert torch.equal(z_image, z_seq) and torch.equal(logdet_image, logdet_seq)
    assert torch.equal(model.reverse(z_image, y), model.unpatchify(flow.reverse(z_seq, y)))


def test_a_point_is_two_tokens_of_one_value_and_blocks_alternate():
    model = random_point_flow()
    assert (model.num_tokens, model.token_dim) == (2, 1)
    assert [b.flip for b in model.blocks] == [False, True, False, True]
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    h = model.to_tokens(x)
    out0, a0 = model.blocks[0](h)
    out1, _ = model.blocks[1](out0)
    # block 0 is an affine coupling: token 0 passes, token 1 moves by a function of token 0
    assert torch.equal(out0[:, 0], h[:, 0]) and not torch.allclose(out0[:, 1], h[:, 1])
    assert torch.equal(a0[:, 0], torch.zeros_like(a0[:, 0]))
    # the next block reads backwards: now token 1 passes and token 0 moves
    assert torch.equal(out1[:, 1], out0[:, 1]) and not torch.allclose(out1[:, 0], out0[:, 0])
    with pytest.raises(ValueError, match="points of shape"):
        model(torch.zeros(3, 3, dtype=torch.float64))


def test_the_inverse_is_exact_and_warp_stages_end_at_it():
    model = random_point_flow()
    x = make_points("spiral", 64, seed=1).double()
    z = model.encode(x)
    back = model.reverse(z)
    assert (back - x).abs().max().item() < 1e-12
    lines = latent_grid_lines(5, 7)
    stages = warp_stages(model, lines)
    assert len(stages) == len(model.blocks) + 1
    assert torch.equal(stages[0], lines.double())  # affine prior: var is ones
    torch.testing.assert_close(stages[-1].reshape(-1, 2), model.reverse(lines.reshape(-1, 2, 1).double()))


def test_log_density_is_change_of_variables_by_autograd():
    model = random_point_flow(seed=3)
    x = torch.tensor([[0.7, -0.4]], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model.trace(v[None])[0].reshape(-1), x[0])
    z = model.trace(x)[0].reshape(-1)
    want = -0.5 * z.pow(2).sum() - math.log(2 * math.pi) + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(log_prob(model, x)[0], want, atol=1e-12, rtol=0)


def test_density_integrates_to_one_on_a_fine_grid():
    model = random_point_flow(seed=5)
    _, mass = density_grid(model, cells=300, box=7.0)
    assert abs(mass - 1) < 0.01, mass
    # a density that is not Gaussian: the flow moved it
    logp, _ = density_grid(model, cells=40, box=7.0)
    centres = torch.linspace(-7, 7, 41)[:-1] + 7 / 40
    yy, xx = torch.meshgrid(centres.flip(0), centres, indexing="ij")
    gauss = -0.5 * (xx**2 + yy**2) - math.log(2 * math.pi)
    assert np.abs(logp - gauss.numpy()).max() > 0.5


def test_training_on_two_moons_beats_a_single_gaussian():
    trainer = PointTrainer(PointSettings(target="two moons", seed=0))
    start = trainer.heldout_nll()
    for step in range(400):
        trainer.step()
        if step % 50 == 49 and trainer.heldout_nll() < trainer.gaussian_nll - 0.2:
            break
    end = trainer.heldout_nll()
    assert end < trainer.gaussian_nll - 0.2 < start, (start, end, trainer.gaussian_nll)
    _, mass = density_grid(trainer.model, cells=160, box=6.0)
    assert abs(mass - 1) < 0.01


def test_the_density_stays_finite_where_float32_overflows_far_from_the_data():
    # The Train tab's playground (two moons, lr 0.005): early on, the flow overflows in float32 at
    # the grid's far corners (nan); the mass it reports must still be a number, and the same as float64's.
    trainer = PointTrainer(PointSettings(target="two moons", blocks=4, width=32, lr=0.005, batch=128, seed=0))
    centres, _ = grid_centres(64, BOX)
    for _ in range(60):
        for _ in range(5):
            trainer.step()
        with torch.no_grad():
            if not torch.isfinite(log_prob(trainer.model, centres.float())).all():
                break
    else:
        pytest.fail("no float32 overflow in 300 steps: this test no longer tests the fallback")
    logp, mass = density_grid(trainer.model, 64)
    logp64, mass64 = density_grid(copy.deepcopy(trainer.model).double(), 64)
    assert np.isfinite(mass) and abs(mass - mass64) < 1e-4, (mass, mass64)
    assert not np.isnan(logp).any()
    finite = np.isfinite(logp64)
    np.testing.assert_allclose(logp[finite], logp64[finite], rtol=1e-4, atol=1e-3)


def test_a_non_finite_loss_stops_before_any_weight_moves():
    trainer = PointTrainer(PointSettings(seed=0, batch=16))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss = -log_prob(trainer.model, torch.full((4, 2), float("nan"))).mean()
    with pytest.raises(FloatingPointError, match="diverged"):
        optimizer_step(trainer.model, trainer.optimizer, loss, 1.0)
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_training_is_deterministic_for_a_seed():
    def losses(seed):
        trainer = PointTrainer(PointSettings(target="rings", seed=seed, batch=64))
        return [trainer.step() for _ in range(5)]

    assert losses(2) == losses(2)
    assert losses(2) != losses(3)


@pytest.mark.parametrize("target", TARGETS)
def test_targets_are_seeded_and_inside_the_plane(target):
    a, b = make_points(target, 500, seed=4), make_points(target, 500, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, make_points(target, 500, seed=5))
    assert a.shape == (500, 2) and a.abs().max() < BOX - 0.2


def test_gaussian_fit_nll_is_the_gaussian_entropy_on_gaussian_data():
    x = make_points("gaussian", 20000, seed=0)
    cov = np.array([[0.8, 0.5], [0.5, 0.6]])
    entropy = 1 + math.log(2 * math.pi) + 0.5 * math.log(np.linalg.det(cov))
    assert abs(gaussian_nll(x[:10000], x[10000:]) - entropy) < 0.03


def test_points_from_ink_land_on_the_ink():
    ink = np.zeros((8, 8))
    ink[1, 6] = 1.0  # one inked pixel: top right
    ink[6, 1] = 3.0  # three times the ink: bottom left
    pts = points_from_ink(ink, 4000, seed=0).numpy()
    span = 2 * 0.9 * BOX / 8
    top_right = (pts[:, 0] > -0.9 * BOX + 6 * span) & (pts[:, 1] > 0.9 * BOX - 2 * span)
    bottom_left = (pts[:, 0] < -0.9 * BOX + 2 * span) & (pts[:, 1] < 0.9 * BOX - 6 * span)
    assert (top_right | bottom_left).all()
    assert 2.7 < bottom_left.sum() / top_right.sum() < 3.3
    with pytest.raises(ValueError, match="no ink"):
        points_from_ink(np.zeros((8, 8)), 10, seed=0)
