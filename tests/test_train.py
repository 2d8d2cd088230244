"""Training: the schedule, deterministic batches, a step that learns, and exact resume."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tarflow.__main__ import main
from tarflow.hub import load_model
from tarflow.train import TrainConfig, batch_indices, lr_at, make_batch, train


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Two classes of 8x8 grey images (bright blobs left vs right) prepared as a cache."""
    from tarflow.data import prepare

    root = tmp_path_factory.mktemp("imgs") / "blobs"
    rng = np.random.default_rng(0)
    for cls, col in [("left", 2), ("right", 5)]:
        (root / cls).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 40, (8, 8)).astype(np.uint8)
            img[2:6, col - 1 : col + 2] = 220
            Image.fromarray(img, "L").save(root / cls / f"{i}.png")
    return prepare(str(root), out_dir=tmp_path_factory.mktemp("data"), image_size=8, channels=1)


def tiny_config(npz, out, **kw):
    base = dict(dataset=str(npz), patch_size=2, channels=32, num_blocks=2, layers_per_block=1, head_dim=16,
                batch_size=8, lr=3e-3, warmup_steps=2, total_steps=8, eval_every=1000, log_every=2,
                eval_images=8, out=str(out), ema_decay=0.9, threads=1)
    return TrainConfig.from_dict({**base, **kw})


def test_schedule_warms_up_then_follows_a_cosine():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=110)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 60) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert lr_at(cfg, 110) == pytest.approx(1e-5)
    assert all(lr_at(cfg, s) >= lr_at(cfg, s + 1) for s in range(10, 120))


def test_batches_are_a_pure_function_of_seed_and_step():
    cfg = TrainConfig(batch_size=4, seed=3, noise_std=0.1, drop_label=0.5)
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(10) % 3
    a = make_batch(cfg, images, labels, 5, num_classes=3)
    b = make_batch(cfg, images, labels, 5, num_classes=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], make_batch(cfg, images, labels, 6, num_classes=3)[0])
    # an epoch (two steps of 4 out of 10 images) never repeats an image
    seen = torch.cat([batch_indices(cfg, 10, s) for s in range(2)])
    assert len(set(seen.tolist())) == 8
    # two processes split the global batch without overlap
    assert set(batch_indices(cfg, 10, 0, 0, 2).tolist()).isdisjoint(batch_indices(cfg, 10, 0, 1, 2).tolist())
    # dropped labels are -1, the rest are the true labels
    x, y = make_batch(cfg, images, labels, 0, num_classes=3)
    idx = batch_indices(cfg, 10, 0)
    assert torch.all((y == -1) | (y == labels[idx]))
    assert x.min() > -1.6 and x.max() < 1.6


def test_class_balance_gives_small_classes_their_share_of_the_batches():
    labels = torch.tensor([0] * 900 + [1] * 100)
    for power in (0.5, 1.0):
        cfg = TrainConfig(batch_size=64, class_balance=power)
        drawn = torch.cat([batch_indices(cfg, 1000, s, labels=labels) for s in range(300)])
        # drawing an image with probability ~ count ** -power gives class c the share c ** (1 - power) / sum
        expected = 100 ** (1 - power) / (900 ** (1 - power) + 100 ** (1 - power))
        assert (labels[drawn] == 1).float().mean().item() == pytest.approx(expected, abs=0.02)
        assert torch.equal(batch_indices(cfg, 1000, 7, labels=labels), batch_indices(cfg, 1000, 7, labels=labels))
        both = torch.cat([batch_indices(cfg, 1000, 7, 0, 2, labels), batch_indices(cfg, 1000, 7, 1, 2, labels)])
        assert sorted(both.tolist()) == sorted(batch_indices(cfg, 1000, 7, labels=labels).tolist())
    # off (the default): plain epochs, no image twice within one
    plain = torch.cat([batch_indices(TrainConfig(batch_size=64), 1000, s, labels=labels) for s in range(15)])
    assert len(set(plain.tolist())) == len(plain)
    # make_batch labels each image with its own class
    images = torch.arange(1000, dtype=torch.uint8).view(1000, 1, 1, 1).repeat(1, 1, 2, 2)
    cfg = TrainConfig(batch_size=64, class_balance=1.0, drop_label=0.0, noise_std=0.0)
    _, y = make_batch(cfg, images, labels, 3, num_classes=2)
    assert torch.equal(y, labels[batch_indices(cfg, 1000, 3, labels=labels)])
    with pytest.raises(ValueError, match="class_balance"):
        TrainConfig.from_dict({"class_balance": 2})


def test_training_lowers_the_loss_on_a_fixed_batch(tiny_dataset):
    from tarflow.data import load
    from tarflow.train import build_model

    cfg = tiny_config(tiny_dataset, "unused", drop_label=0.0)
    data = load(tiny_dataset)
    images, labels = data.tensors("train")
    torch.manual_seed(0)
    model = build_model(cfg, 8, 1, data.class_names)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    x, y = make_batch(cfg, images, labels, 0, num_classes=2)

    def loss():
        z, _, logdets = model(x, y)
        return model.get_loss(z, logdets)

    before = loss().item()
    for _ in range(5):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < before - 0.05


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    straight = tiny_config(tiny_dataset, tmp_path / "a")
    train(straight, quiet=True)
    stopped = tiny_config(tiny_dataset, tmp_path / "b")
    train(stopped, max_steps=3, quiet=True)
    state = torch.load(tmp_path / "b" / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 3
    train(tiny_config(tiny_dataset, tmp_path / "b"), quiet=True)  # a new call: resumes at step 3
    a = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    ema_b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert not torch.equal(ema_a["blocks.0.proj_out.weight"], a["blocks.0.proj_out.weight"])  # EMA differs


def test_a_sample_grid_that_overflows_costs_the_grid_not_the_run(tiny_dataset, tmp_path, monkeypatch):
    import tarflow.train as train_module

    def overflow(*args, **kwargs):
        raise FloatingPointError("sampling overflowed (non-finite values)")

    monkeypatch.setattr(train_module, "sample", overflow)
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    model_dir = train(cfg, quiet=True)
    assert (model_dir / "model.safetensors").is_file() and (tmp_path / "run" / "checkpoint").is_dir()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "eval_bpd" in r][-1]
    assert final["step"] == 8 and final["eval_samples"] == "overflowed" and np.isfinite(final["eval_bpd"])
    assert not (tmp_path / "run" / "samples").exists() or not any((tmp_path / "run" / "samples").iterdir())


def test_zero_log_and_eval_intervals_mean_only_at_the_end(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "run", eval_every=0, log_every=0, total_steps=3), quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3]
    assert [r["step"] for r in rows if "eval_bpd" in r] == [3]


def test_a_run_leaves_metrics_curves_samples_and_a_loadable_model(tiny_dataset, tmp_path, capsys):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", eval_every=4, total_steps=8, guidance=1.5)
    target = train(cfg, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6, 8]
    evals = [r for r in rows if "eval_bpd" in r]
    assert [r["step"] for r in evals] == [4, 8] and all(np.isfinite(r["eval_noisy_bpd"]) for r in evals)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step_0000004.png",
                                                                                "step_0000008.png"]
    model = load_model(target)
    assert model.class_names == ["left", "right"] and model.sampling["guidance"] == 1.5
    assert model.noise_std == pytest.approx(0.1) and model.img_size == 8
    # the eval command on the exported model: the same numbers as the run's own last evaluation
    assert main(["eval", "--model", str(target), "--images", "8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    bpd = float(out.split("uniform dequantization): ")[1].split()[0])
    assert bpd == pytest.approx(evals[-1]["eval_bpd"], abs=1e-3)
    assert "training noise (sigma 0.1)" in out


def test_config_files_are_checked(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"datset": "mnist"}))
    with pytest.raises(ValueError, match="unknown config keys: datset"):
        TrainConfig.from_file(bad)
    with pytest.raises(ValueError, match="noise must be"):
        TrainConfig.from_dict({"noise": "pink"})
    # a run's saved config from an older version (keys since dropped) still resumes
    assert TrainConfig.from_checkpoint({"lr": 5e-4, "sample_every": 500, "extra": {}}).lr == 5e-4
    for path in sorted(__import__("pathlib").Path(__file__).parent.parent.glob("configs/*.json")):
        TrainConfig.from_file(path)  # every shipped config parses


def test_the_model_takes_every_architecture_field_from_the_config_or_the_data(tiny_dataset):
    from tarflow.data import load
    from tarflow.model import Architecture
    from tarflow.train import FROM_DATA, build_model

    options = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(Architecture.field_names()) - set(FROM_DATA) <= options
    cfg = tiny_config(tiny_dataset, "unused", nvp=False, expansion=2)
    data = load(tiny_dataset)
    model = build_model(cfg, data.image_size, data.channels, data.class_names)
    assert model.architecture == Architecture(in_channels=1, img_size=8, patch_size=2, channels=32, num_blocks=2,
                                              layers_per_block=1, nvp=False, num_classes=2, head_dim=16, expansion=2)


def test_a_checkpoint_of_an_older_version_resumes_exactly(tiny_dataset, tmp_path):
    """Saved configs keep keys that later versions dropped; the run still continues as if unbroken."""
    train(tiny_config(tiny_dataset, tmp_path / "a", nvp=False), quiet=True)
    stopped = tmp_path / "b"
    train(tiny_config(tiny_dataset, stopped, nvp=False), max_steps=3, quiet=True)
    path = stopped / "checkpoint" / "train_state.pt"
    state = torch.load(path, weights_only=True)
    state["config"] = {**state["config"], "sample_every": 500, "total_steps": 8}
    torch.save(state, path)
    train(tiny_config(tiny_dataset, stopped, nvp=False, total_steps=0), quiet=True)  # the schedule from the checkpoint
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(stopped / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fitting_the_schedule_to_minutes_leaves_the_weights_alone(tiny_dataset, tmp_path):
    from tarflow.data import load
    from tarflow.train import build_model

    cfg = tiny_config(tiny_dataset, tmp_path / "run", total_steps=0)
    train(cfg, minutes=0.5, max_steps=0, quiet=True)  # time the steps, fit the schedule, train none
    state = torch.load(tmp_path / "run" / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 0 and state["config"]["total_steps"] > cfg.warmup_steps
    torch.manual_seed(cfg.seed)
    data = load(tiny_dataset)
    fresh = build_model(cfg, data.image_size, data.channels, data.class_names).state_dict()
    saved = load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)
    with pytest.raises(ValueError, match="give --minutes"):
        train(tiny_config(tiny_dataset, tmp_path / "other", total_steps=0), quiet=True)


def test_the_classification_term_is_the_cross_entropy_of_bayes_rule(tiny_dataset, tmp_path):
    """classification_loss against an independent computation: likelihood.class_log_likelihoods on
    the same clean images, softmax, class-weighted negative log of the true class."""
    from tarflow.likelihood import class_log_likelihoods
    from tarflow.train import _generator, classification_loss, start_run

    run = start_run(tiny_config(tiny_dataset, tmp_path / "run", hybrid=1.0, hybrid_batch=6), quiet=True)
    run.net.eval()
    got = classification_loss(run, step=3)
    import copy

    idx = torch.randint(len(run.images), (6,), generator=_generator(0, 3, 0, 11))
    with torch.no_grad():
        ll = class_log_likelihoods(copy.deepcopy(run.net).double(), run.images[idx].double() / 127.5 - 1)
    counts = torch.bincount(run.labels, minlength=2).double()
    w = counts.sum() / (2 * counts)
    labels = run.labels[idx]
    expected = (w[labels] * -torch.log_softmax(ll, dim=1)[torch.arange(6), labels]).sum() / w[labels].sum()
    assert got.item() == pytest.approx(float(expected), rel=1e-4)
    got.backward()  # it trains (at initialisation the output layers are zero, so the gradient starts there)
    assert sum(float(p.grad.abs().sum()) for p in run.net.parameters() if p.grad is not None) > 0


def test_random_shift_moves_each_image_and_repeats_the_edges():
    """Against an independent construction: each output is its input moved by some (dy, dx) within
    the limit, with the uncovered rows and columns copying the nearest edge; the offsets differ
    between images and cover the whole range."""
    from tarflow.train import random_shift

    x = torch.arange(2 * 6 * 7, dtype=torch.float64).view(2, 6, 7)
    batch = x.unsqueeze(0).repeat(64, 1, 1, 1)
    out = random_shift(batch, 2, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape

    def moved(img, dy, dx):
        rows = np.clip(np.arange(6) - dy, 0, 5)
        cols = np.clip(np.arange(7) - dx, 0, 6)
        return torch.from_numpy(img.numpy()[:, rows][:, :, cols])

    seen = set()
    for o in out:
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(o, moved(x, dy, dx))]
        assert len(hits) == 1, "every image is its input moved by exactly one offset"
        seen.add(hits[0])
    assert len(seen) >= 15  # 25 offsets possible; 64 draws find most of them
    assert torch.equal(random_shift(batch, 0, torch.Generator()), batch)


def test_the_classification_term_scores_shifted_images(tiny_dataset, tmp_path):
    """With hybrid_shift the term is the cross-entropy on the moved images (the same draw as
    random_shift from the step's generator), not on the training images as they are."""
    import copy

    from tarflow.likelihood import class_log_likelihoods
    from tarflow.train import _generator, classification_loss, random_shift, start_run

    run = start_run(tiny_config(tiny_dataset, tmp_path / "run", hybrid=1.0, hybrid_batch=6, hybrid_shift=2),
                    quiet=True)
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero output layers, so that moving an image changes its score
        for p in run.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run.net.eval()
    got = classification_loss(run, step=5).item()
    g = _generator(0, 5, 0, 11)
    idx = torch.randint(len(run.images), (6,), generator=g)
    net = copy.deepcopy(run.net).double()
    counts = torch.bincount(run.labels, minlength=2).double()
    w = counts.sum() / (2 * counts)
    labels = run.labels[idx]

    def cross_entropy(x):
        with torch.no_grad():
            ll = class_log_likelihoods(net, x)
        return float((w[labels] * -torch.log_softmax(ll, dim=1)[torch.arange(6), labels]).sum() / w[labels].sum())

    clean = run.images[idx].double() / 127.5 - 1
    assert got == pytest.approx(cross_entropy(random_shift(clean, 2, g)), rel=1e-4)
    assert got != pytest.approx(cross_entropy(clean), rel=1e-3)


def test_the_hybrid_objective_separates_the_classes(tiny_dataset, tmp_path):
    """With the classification term a short run classifies the images by likelihood better than
    the same run without it; its evaluations log the (balanced) accuracy."""
    from tarflow.data import load
    from tarflow.train import classification_scores

    images, labels = load(str(tiny_dataset)).tensors("all")
    scores = {}
    for w in (0.0, 5.0):
        cfg = tiny_config(tiny_dataset, tmp_path / f"w{w}", hybrid=w, hybrid_batch=8, total_steps=30,
                          eval_every=30, drop_label=0.0, eval_classify=8, guidance=0.0, ema_decay=0.0)
        model = load_model(train(cfg, quiet=True))
        rows = [json.loads(r) for r in (tmp_path / f"w{w}" / "metrics.jsonl").read_text().splitlines()]
        logged = [r for r in rows if "eval_accuracy" in r][-1]
        assert 0.0 <= logged["eval_balanced_accuracy"] <= 1.0
        scores[w] = classification_scores(model, images, labels)["accuracy"]
    assert scores[5.0] >= 0.8 and scores[5.0] >= scores[0.0] + 0.15, scores


def test_a_run_can_start_from_another_models_weights(tiny_dataset, tmp_path):
    first = train(tiny_config(tiny_dataset, tmp_path / "first"), quiet=True)
    from tarflow.train import start_run

    run = start_run(tiny_config(tiny_dataset, tmp_path / "second", init=str(first)), quiet=True)
    start = load_file(first / "model.safetensors")
    for k, v in run.net.state_dict().items():
        assert torch.equal(v, start[k].to(v.dtype)), k
    assert all(torch.equal(run.ema.shadow[k], start[k].float()) for k in start)  # the EMA starts there too
    # another architecture is refused with the names of the tensors that differ
    with pytest.raises(ValueError, match="does not match"):
        start_run(tiny_config(tiny_dataset, tmp_path / "third", init=str(first), channels=16), quiet=True)


def test_hflip_mirrors_about_half_and_never_the_classes_it_must_not():
    """Left-right mirroring with no_flip: images of an excluded class are never mirrored (named
    directly, or through their coarse class for a finer label set); the others about half the time."""
    from tarflow.data import ImageData
    from tarflow.train import flippable_classes

    # toy data: 4 fine classes under 2 coarse ones ("letters" must not be mirrored)
    data = ImageData(np.zeros((4, 4, 4, 1), np.uint8), np.arange(4), ["cat", "dog", "A", "B"], np.zeros(4, bool),
                     "toy:sub", {"label_set": "sub", "coarse_class_names": ["animals", "letters"]},
                     {"sub_category": np.array([0, 0, 1, 1])})
    cfg = TrainConfig(batch_size=400, hflip=True, noise_std=0.0, drop_label=0.0, no_flip=("letters",))
    assert flippable_classes(cfg, data).tolist() == [True, True, False, False]
    assert flippable_classes(dataclasses.replace(cfg, no_flip=("dog",)), data).tolist() == [True, False, True, True]
    assert flippable_classes(dataclasses.replace(cfg, hflip=False), data) is None
    with pytest.raises(ValueError, match="does not have: fish"):
        flippable_classes(dataclasses.replace(cfg, no_flip=("fish",)), data)

    left = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    left[..., 0] = 255  # a bright left column: mirrored, it is on the right
    images, labels = left.repeat(400, 1, 1, 1), torch.arange(400) % 4
    x, y = make_batch(cfg, images, labels, 0, num_classes=4, flippable=flippable_classes(cfg, data))
    mirrored = x[:, 0, 0, -1] > 0
    assert not mirrored[y >= 2].any()
    assert 0.35 < mirrored[y < 2].float().mean() < 0.65
    assert torch.equal(x[~mirrored], images[~mirrored].float() / 127.5 - 1)
    assert torch.equal(x[mirrored], images[mirrored].flip(-1).float() / 127.5 - 1)
    assert TrainConfig.from_dict({"no_flip": ["Symbols", "Flags"]}).no_flip == ("Symbols", "Flags")


def test_shift_moves_each_training_image_by_at_most_the_limit_and_leaves_the_rest_of_the_batch():
    """make_batch with shift: every image is its own input moved by at most 1 pixel each way (edges
    repeated), most are moved, and the noise and label draws are those of the run without it."""
    from tarflow.calibration import shifted

    images = torch.randint(0, 256, (64, 1, 6, 6), dtype=torch.uint8)
    labels = torch.arange(64) % 4
    plain_cfg = TrainConfig(batch_size=64, noise_std=0.0, drop_label=0.3)
    cfg = dataclasses.replace(plain_cfg, shift=1)
    x, y = make_batch(cfg, images, labels, 2, num_classes=4)
    x0, y0 = make_batch(plain_cfg, images, labels, 2, num_classes=4)
    assert torch.equal(y, y0)
    idx = batch_indices(cfg, 64, 2)
    moved = 0
    for out, plain, source in zip(x, x0, images[idx].float() / 127.5 - 1):
        assert torch.equal(plain, source)
        hits = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if torch.equal(out, shifted(source[None], dy, dx)[0])]
        assert hits, "each image is its input moved by at most one pixel"
        moved += (0, 0) not in hits
    assert moved > 32  # 8 of the 9 offsets move the image


def test_finer_classes_start_at_their_coarse_class(tmp_path):
    """A model with 3 categories starts a 5-subcategory model: each subcategory's embedding is a
    copy of its category's; everything else is copied as is."""
    from tarflow.data import ImageData
    from tarflow.train import build_model, load_initial_weights

    cfg = TrainConfig(patch_size=2, channels=16, num_blocks=1, layers_per_block=1, head_dim=8)
    coarse = build_model(cfg, 4, 1, ["a", "b", "c"])
    coarse.save_pretrained(tmp_path / "coarse")
    parent = np.array([0, 0, 1, 2, 2])
    data = ImageData(np.zeros((5, 4, 4, 1), np.uint8), np.arange(5), list("vwxyz"), np.zeros(5, bool), "toy:sub",
                     {"label_set": "sub"}, {"sub_category": parent})
    assert data.class_parent().tolist() == parent.tolist()
    fine = build_model(cfg, 4, 1, list("vwxyz"))
    load_initial_weights(fine, tmp_path / "coarse", data)
    assert torch.equal(fine.blocks[0].class_embed, coarse.blocks[0].class_embed[torch.as_tensor(parent)])
    assert torch.equal(fine.blocks[0].proj_in.weight, coarse.blocks[0].proj_in.weight)
    no_map = dataclasses.replace(data, meta={})
    with pytest.raises(ValueError, match="no map"):
        load_initial_weights(build_model(cfg, 4, 1, list("vwxyz")), tmp_path / "coarse", no_map)
