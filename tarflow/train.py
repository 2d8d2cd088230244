"""Training with accelerate: one command from a laptop CPU to many GPUs.

    python -m tarflow train --config configs/mnist.json [--out runs/mnist] [--minutes 60] [--stop-after 170]
    accelerate launch -m tarflow train --config configs/mnist.json

Every random draw of a step (which images, the noise added, which labels are dropped) is a pure
function of (seed, step, process), so a run resumed from a checkpoint continues exactly as if it
had never stopped: the checkpoint holds the weights, the optimiser, the EMA and the step, and the
learning-rate schedule is a function of the step.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from tarflow.calibration import accuracy, balanced_accuracy, shifted
from tarflow.data import ImageData, load
from tarflow.images import grid, save_png
from tarflow.likelihood import bits_per_dim, class_log_likelihoods, log_prob, to_bits_per_dim
from tarflow.model import Architecture, TarFlow, at_least_fp32
from tarflow.sampling import SampleSettings, sample

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class TrainConfig:
    # data
    dataset: str = "mnist"
    data_dir: str = "data"
    hflip: bool = False  # mirror half the training images left-right...
    no_flip: tuple[str, ...] = ()  # ...but never these classes (a coarse class covers its fine ones)
    shift: int = 0  # move each training image by up to this many pixels (edges repeated); 0: as they are
    # Draw images with probability proportional to (their class's image count) ** -class_balance:
    # 0 keeps plain epochs (big classes seen most), 1 gives every class the same share of each batch.
    class_balance: float = 0.0
    # model
    patch_size: int = 4
    channels: int = 128
    num_blocks: int = 4
    layers_per_block: int = 4
    head_dim: int = 64
    expansion: int = 4
    nvp: bool = True
    conditional: bool = True
    # noise: "gaussian" (noise_std, for sampling + denoising) or "uniform" (dequantization, for bits/dim)
    noise: str = "gaussian"
    noise_std: float = 0.1
    # optimisation
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 200
    total_steps: int = 0  # 0: set from --minutes after timing the first steps
    grad_clip: float = 1.0
    drop_label: float = 0.1
    ema_decay: float = 0.999  # 0 disables; the decay warms up as min(decay, (1 + t) / (10 + t))
    seed: int = 0
    # fine-tuning and the hybrid objective
    init: str = ""  # a model folder whose weights start a fresh run (a resumed run ignores it)
    hybrid: float = 0.0  # weight of the classification term (see classification_loss); 0: pure likelihood
    hybrid_batch: int = 16  # clean training images per step scored under every class for that term
    hybrid_shift: int = 0  # that term's images moved by up to this many pixels (0: as they are)
    # logistics
    out: str = "runs/mnist"
    log_every: int = 25  # 0: only the last step
    eval_every: int = 500  # held-out bits/dim and a sample grid; 0: only after the last step
    checkpoint_minutes: float = 5.0
    eval_images: int = 1000
    eval_classify: int = 200  # held-out images classified by likelihood at each evaluation (0: none)
    threads: int = 0  # 0: torch's default
    bf16: bool = True  # on CUDA
    # recommended sampling, written into the exported model
    guidance: float = 2.0
    attn_temp: float = 1.0
    temperature: float = 1.0  # prior temperature

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        raw = json.loads(Path(path).read_text())
        raw.pop("_comment", None)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        for key in ("betas", "no_flip"):
            if key in raw:
                raw = {**raw, key: tuple(raw[key])}
        cfg = cls(**raw)
        if cfg.noise not in ("gaussian", "uniform"):
            raise ValueError(f"noise must be 'gaussian' or 'uniform', got {cfg.noise!r}")
        if not 0 <= cfg.class_balance <= 1:
            raise ValueError(f"class_balance must be between 0 and 1, got {cfg.class_balance}")
        return cfg

    @classmethod
    def from_checkpoint(cls, raw: dict[str, Any]) -> TrainConfig:
        """A config saved by a run, tolerating keys that older versions wrote and this one dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in raw.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def _generator(*key: int) -> torch.Generator:
    # A fixed mixing of the key into one 63-bit seed.
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def batch_indices(cfg: TrainConfig, n: int, step: int, rank: int = 0, world: int = 1,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """This process's share of the global batch of ``step``: epochs are seeded permutations, or with
    ``class_balance`` and ``labels``, a seeded draw (with replacement) that favours small classes."""
    if cfg.class_balance and labels is not None:
        counts = torch.bincount(labels).double()
        weights = counts[labels] ** -cfg.class_balance
        drawn = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=_generator(cfg.seed, step, 3))
        return drawn[rank::world]
    per_epoch = max(1, n // cfg.batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=_generator(cfg.seed, epoch))
    if n < cfg.batch_size:  # tiny datasets: sample with replacement
        perm = torch.randint(n, (cfg.batch_size,), generator=_generator(cfg.seed, epoch, 1))
        k = 0
    return perm[k * cfg.batch_size : (k + 1) * cfg.batch_size][rank::world]


def make_batch(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, step: int, rank: int = 0,
               world: int = 1, num_classes: int = 0, flippable: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (N, C, H, W) -> the noisy [-1, 1] batch and labels (dropped ones set to -1).
    With hflip, ``flippable`` (a bool per class, see flippable_classes) says whose images may be mirrored."""
    idx = batch_indices(cfg, len(images), step, rank, world, labels if num_classes else None)
    g = _generator(cfg.seed, step, rank, 7)
    x = random_shift(images[idx].float(), cfg.shift, _generator(cfg.seed, step, rank, 13))
    if cfg.noise == "gaussian":
        x = x / 127.5 - 1 + cfg.noise_std * torch.randn(x.shape, generator=g)
    else:
        x = (x + torch.rand(x.shape, generator=g)) / 128.0 - 1
    if cfg.hflip:
        flip = torch.rand(len(idx), generator=g) < 0.5
        if flippable is not None:
            flip &= flippable[labels[idx]]
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if not num_classes:
        return x, None
    y = labels[idx].clone()
    y[torch.rand(len(idx), generator=g) < cfg.drop_label] = -1
    return x, y


def random_shift(x: torch.Tensor, max_px: int, g: torch.Generator) -> torch.Tensor:
    """Each image of x (B, C, H, W) moved by its own random whole-pixel offset of at most ``max_px``
    in each direction; the pixels uncovered at an edge repeat that edge (the background)."""
    if max_px <= 0:
        return x
    offsets = (max_px - torch.randint(0, 2 * max_px + 1, (len(x), 2), generator=g)).tolist()
    return torch.cat([shifted(image[None], dy, dx) for image, (dy, dx) in zip(x, offsets)])


def flippable_classes(cfg: TrainConfig, data: ImageData) -> torch.Tensor | None:
    """Per class, whether hflip may mirror its images: all but those named in no_flip (by their own
    name or, for a finer label set, by their coarse class's). None when nothing is flipped."""
    if not cfg.hflip:
        return None
    families = [data.class_family(k) for k in range(data.num_classes)]
    unknown = sorted(set(cfg.no_flip) - {n for family in families for n in family})
    if unknown:
        raise ValueError(f"no_flip names classes {data.name} does not have: {', '.join(unknown)}")
    return torch.tensor([not set(family) & set(cfg.no_flip) for family in families], dtype=torch.bool)


class EMA:
    """Exponential moving average of the weights, with a decay that warms up from 0."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}
        self.updates = int(state["updates"])


# The architecture's fields that the data decide; TrainConfig names every other one as Architecture does.
FROM_DATA = ("in_channels", "img_size", "num_classes")


def build_model(cfg: TrainConfig, image_size: int, channels: int, class_names: list[str]) -> TarFlow:
    num_classes = len(class_names) if cfg.conditional else 0
    chosen = {name: getattr(cfg, name) for name in Architecture.field_names() if name not in FROM_DATA}
    return TarFlow(
        in_channels=channels, img_size=image_size, num_classes=num_classes, **chosen,
        noise_std=cfg.noise_std if cfg.noise == "gaussian" else 0.0,
        class_names=class_names if num_classes else None, dataset=cfg.dataset,
        sampling={"guidance": cfg.guidance if num_classes else 0.0, "attn_temp": cfg.attn_temp,
                  "temperature": cfg.temperature},
    )


@torch.no_grad()
def evaluate(model: TarFlow, cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 250) -> dict[str, float]:
    """Held-out bits/dim of uniformly dequantized images (the standard 8-bit measure) and, for a
    noise-augmented model, the NLL of the held-out images with its training noise added: the
    density that model was trained on, in the same 8-bit units (bits/dim)."""
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {"bpd": [], "noisy_bpd": []}
    g = _generator(cfg.seed, 99)
    for i in range(0, len(images), batch):
        x8 = images[i : i + batch]
        y = labels[i : i + batch].to(device) if model.num_classes else None
        x = ((x8.float() + torch.rand(x8.shape, generator=g)) / 128.0 - 1).to(device)
        out["bpd"].append(bits_per_dim(model, x, y).cpu())
        if cfg.noise == "gaussian":
            xn = (x8.float() / 127.5 - 1 + cfg.noise_std * torch.randn(x8.shape, generator=g)).to(device)
            out["noisy_bpd"].append(to_bits_per_dim(-log_prob(model, xn, y), model.num_dims).cpu())
    return {k: torch.cat(v).mean().item() for k, v in out.items() if v}


@torch.no_grad()
def classification_scores(model: TarFlow, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and balanced accuracy of classification by likelihood on clean uint8 images."""
    device = next(model.parameters()).device
    ll = class_log_likelihoods(model, (images.float() / 127.5 - 1).to(device)).cpu()
    return {"accuracy": accuracy(ll, labels), "balanced_accuracy": balanced_accuracy(ll, labels)}


def sample_grid(model: TarFlow, cfg: TrainConfig, path: Path, per_class: int = 8) -> None:
    """A fixed-noise grid, one row per class (or 8 rows unconditional), denoised if noise-augmented."""
    k = model.num_classes or 8
    classes = [c for c in range(model.num_classes) for _ in range(per_class)] if model.num_classes else None
    s = SampleSettings(num=k * per_class, classes=classes, seed=1234, denoise=cfg.noise == "gaussian")
    save_png(grid(sample(model, s).uint8(), nrow=per_class), path, scale=2)


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_bpd" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="training loss")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("loss (nats/dim, up to a constant)")
        axes[0].legend()
    if evals:
        axes[1].plot([r["step"] for r in evals], [r["eval_bpd"] for r in evals], "o-", label="held-out bits/dim")
        if "eval_noisy_bpd" in evals[0]:
            axes[1].plot([r["step"] for r in evals], [r["eval_noisy_bpd"] for r in evals], "s-",
                         label="held-out, noisy data")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("bits/dim")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


@dataclass
class Run:
    """A training run in progress: what the loop and its steps share."""

    cfg: TrainConfig
    acc: Accelerator
    data: ImageData
    model: torch.nn.Module  # as accelerate prepared it (possibly wrapped)
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    step: int
    started: float

    def __post_init__(self) -> None:
        self.out = Path(self.cfg.out)
        self.images, self.labels = self.data.tensors("train")
        test_images, test_labels = self.data.tensors("test")
        self.test_images, self.test_labels = test_images[: self.cfg.eval_images], test_labels[: self.cfg.eval_images]
        self.flippable = flippable_classes(self.cfg, self.data) if self.data.num_classes else None

    @property
    def net(self) -> TarFlow:
        """The TarFlow itself, unwrapped."""
        return self.acc.unwrap_model(self.model)


class Throughput:
    """Images per second since the last restart (evaluations restart it: they are not training)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.since, self.images = time.time(), 0

    def rate(self) -> float:
        return self.images / max(1e-9, time.time() - self.since)


def train(cfg: TrainConfig, minutes: float | None = None, stop_after: float | None = None,
          max_steps: int | None = None, quiet: bool = False) -> Path:
    """Train (or resume) the run in ``cfg.out``; return the folder of the exported model.

    ``minutes`` fits total_steps to a time budget (measured on the first steps) when the config
    does not fix it; ``stop_after`` ends this process cleanly with a checkpoint after that many
    minutes (for sessions with a time limit); ``max_steps`` stops after that global step.
    """
    run = start_run(cfg, quiet)
    if not cfg.total_steps:
        if not minutes:
            raise ValueError("set total_steps in the config or give --minutes")
        cfg.total_steps = _fit_steps(run, minutes)
        if not quiet:
            run.acc.print(f"fitted the schedule to {minutes} min: {cfg.total_steps} steps")
    end = cfg.total_steps if max_steps is None else min(cfg.total_steps, max_steps)
    run.model.train()
    bar = tqdm(total=end, initial=run.step, desc="training", disable=quiet or not run.acc.is_main_process, unit="step")
    speed, last_checkpoint = Throughput(), time.time()
    while run.step < end:
        loss, grad_norm, images = train_step(run, run.step)
        if run.ema is not None:
            run.ema.update(run.net)
        run.step += 1
        speed.images += images
        bar.update(1)
        if (cfg.log_every and run.step % cfg.log_every == 0) or run.step == end:
            row = {"step": run.step, "loss": loss.item(), "lr": lr_at(cfg, run.step - 1),
                   "images_per_s": round(speed.rate(), 1),
                   "grad_norm": float(grad_norm) if grad_norm is not None else None,
                   "minutes": round((time.time() - run.started) / 60, 2)}
            log(run, row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
            speed.restart()
        if run.acc.is_main_process and ((cfg.eval_every and run.step % cfg.eval_every == 0) or run.step == end):
            log(run, {"step": run.step, **{f"eval_{k}": v for k, v in evaluate_and_sample(run).items()}})
            plot_curves(run.out / "metrics.jsonl", run.out / "loss.png")
            speed.restart()
        if stop_after is not None and time.time() - run.started > stop_after * 60:
            if not quiet:
                run.acc.print(f"stopping at step {run.step} (time limit); resume with the same command")
            break
        if time.time() - last_checkpoint > cfg.checkpoint_minutes * 60 and run.step < end:
            save_checkpoint(run)
            last_checkpoint = time.time()
    bar.close()
    run.acc.wait_for_everyone()
    save_checkpoint(run)  # the one final save, whether the run ended or ran out of time
    return run.out / "model"


def start_run(cfg: TrainConfig, quiet: bool = False) -> Run:
    """Data, model, optimiser and EMA for ``cfg``, resumed from the run's checkpoint if it has one."""
    from accelerate import Accelerator  # imported only to train: it is slow to import

    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = Accelerator(mixed_precision="bf16" if cfg.bf16 and torch.cuda.is_available() else "no")
    data = load(cfg.dataset, cfg.data_dir)
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, data.image_size, data.channels, data.class_names)
    if cfg.init and not (Path(cfg.out) / "checkpoint" / "train_state.pt").is_file():
        load_initial_weights(model, cfg.init, data)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "embed" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    step = resume(Path(cfg.out) / "checkpoint", cfg, model, optimizer, ema)
    if step and not quiet:
        acc.print(f"resumed {cfg.out} at step {step} of {cfg.total_steps}")
    model, optimizer = acc.prepare(model, optimizer)
    (Path(cfg.out) / "samples").mkdir(parents=True, exist_ok=True)
    return Run(cfg, acc, data, model, optimizer, ema, step, started)


def load_initial_weights(model: TarFlow, folder: str | Path, data: ImageData) -> None:
    """Start from another model's weights (fine-tuning). The architecture must match. If the
    class count differs and the data say which coarse class each of its classes belongs to
    (``class_parent``: emoji subcategories -> categories), each class embedding starts at its
    parent's; otherwise the class embeddings must match too."""
    weights = load_file(Path(folder) / "model.safetensors")
    own = model.state_dict()
    for key in [k for k in own if k.endswith("class_embed") and k in weights]:
        old, new = weights[key], own[key]
        if old.shape[0] == new.shape[0]:
            continue
        parent = data.class_parent()
        if parent is None or len(parent) != new.shape[0] or int(parent.max()) >= old.shape[0]:
            raise ValueError(f"{folder} has {old.shape[0]} classes and {data.name} {new.shape[0]}, "
                             "with no map from one to the other")
        weights[key] = old[torch.as_tensor(parent)].clone()
    mismatched = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if mismatched:
        raise ValueError(f"{folder} does not match this architecture: {', '.join(mismatched[:4])}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=True)


def resume(ckpt_dir: Path, cfg: TrainConfig, model: TarFlow, optimizer: torch.optim.Optimizer,
           ema: EMA | None) -> int:
    """Load a run's checkpoint (if there is one) into the model, optimiser and EMA; return its step
    (0 without one). A schedule left open (total_steps 0) takes the checkpoint's."""
    if not (ckpt_dir / "train_state.pt").is_file():
        return 0
    state = torch.load(ckpt_dir / "train_state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(load_file(ckpt_dir / "model.safetensors"), strict=True)
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    cfg.total_steps = cfg.total_steps or TrainConfig.from_checkpoint(state["config"]).total_steps
    return int(state["step"])


def train_step(run: Run, step: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """One optimiser step on the batch of ``step`` at its learning rate; returns the loss, the
    gradient norm before clipping (None without clipping) and the images seen by all processes."""
    cfg, acc, net = run.cfg, run.acc, run.net
    x, y = make_batch(cfg, run.images, run.labels, step, acc.process_index, acc.num_processes, run.data.num_classes,
                      run.flippable)
    x = x.to(acc.device)
    y = y.to(acc.device) if y is not None else None
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(cfg, step)
    with acc.autocast():
        z, _, logdets = run.model(x, y)
        loss = net.get_loss(z, logdets)
        if cfg.hybrid and run.data.num_classes:
            loss = loss + cfg.hybrid * classification_loss(run, step) / net.num_dims
    if not cfg.nvp:  # running prior variance, averaged over processes as in the reference
        net.update_prior(acc.gather(z.detach().pow(2).mean(0, keepdim=True)).sqrt())
    run.optimizer.zero_grad(set_to_none=True)
    acc.backward(loss)
    grad_norm = acc.clip_grad_norm_(run.model.parameters(), cfg.grad_clip) if cfg.grad_clip else None
    run.optimizer.step()
    return loss, grad_norm, len(x) * acc.num_processes


def classification_loss(run: Run, step: int) -> torch.Tensor:
    """The hybrid objective's discriminative term: the cross-entropy (nats per image) of Bayes'
    rule, p(y | x) proportional to p(x | y), on ``hybrid_batch`` clean training images (the input
    the likelihood classifier sees; moved by up to ``hybrid_shift`` pixels, so that it cannot just
    learn the training images by heart), each scored under every class. Classes are weighted by the
    inverse of their share of the training images, so a rare class counts as much as a common one.
    Its gradient pushes the true class's log-likelihood up against the others'; with weight w the
    step's loss is NLL per dimension + w x this / dimensions, i.e. w images' worth of likelihood."""
    cfg, acc, net = run.cfg, run.acc, run.net
    g = _generator(cfg.seed, step, acc.process_index, 11)
    idx = torch.randint(len(run.images), (cfg.hybrid_batch,), generator=g)
    k = run.data.num_classes
    x = random_shift(run.images[idx].float() / 127.5 - 1, cfg.hybrid_shift, g)
    x = x.to(acc.device).repeat_interleave(k, dim=0)
    classes = torch.arange(k, device=acc.device).repeat(len(idx))
    z, _, logdets = run.model(x, classes)
    z = at_least_fp32(z)
    # log p(x | y) up to terms equal for every class (the prior's normaliser)
    ll = -0.5 * (z.pow(2) / net.var.to(z.dtype)).sum(dim=(1, 2)) + logdets * net.num_dims
    counts = torch.bincount(run.labels, minlength=k).clamp(min=1).float()
    weight = (counts.sum() / (k * counts)).to(acc.device)
    return torch.nn.functional.cross_entropy(ll.view(len(idx), k), run.labels[idx].to(acc.device), weight=weight)


def averaged_model(run: Run) -> TarFlow:
    """The weights to evaluate and export: the EMA copy in a model of its own (the trained model
    itself when the run keeps no EMA)."""
    if run.ema is None:
        return run.net
    model = build_model(run.cfg, run.data.image_size, run.data.channels, run.data.class_names)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in run.ema.shadow.items()})
    return model.to(run.acc.device)


def evaluate_and_sample(run: Run) -> dict[str, float | str]:
    """Held-out bits/dim of the averaged model, and its sample grid for this step ("samples": "overflowed"
    when the grid could not be drawn)."""
    model = averaged_model(run).eval()
    result = evaluate(model, run.cfg, run.test_images, run.test_labels)
    if run.cfg.eval_classify and model.num_classes:
        result.update(classification_scores(model, run.test_images[: run.cfg.eval_classify],
                                            run.test_labels[: run.cfg.eval_classify]))
    try:
        sample_grid(model, run.cfg, run.out / "samples" / f"step_{run.step:07d}.png")
    except FloatingPointError as e:  # an unstable early model: no grid this time, but the run goes on and saves
        result["samples"] = "overflowed"
        run.acc.print(f"step {run.step}: no sample grid ({e})")
    run.net.train()  # the trained model itself, when the run keeps no EMA
    return result


def save_checkpoint(run: Run) -> None:
    """Weights, optimiser, EMA and step into out/checkpoint, replaced whole (an interrupted save
    never leaves a half-written checkpoint behind); then the averaged model into out/model."""
    if not run.acc.is_main_process:
        return
    ckpt_dir, tmp = run.out / "checkpoint", run.out / "checkpoint.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in run.net.state_dict().items()}, tmp / "model.safetensors")
    torch.save({"step": run.step, "optimizer": run.optimizer.state_dict(), "config": run.cfg.to_dict(),
                "ema": run.ema.state_dict() if run.ema is not None else None}, tmp / "train_state.pt")
    if ckpt_dir.exists():
        for f in ckpt_dir.iterdir():
            f.unlink()
        ckpt_dir.rmdir()
    tmp.rename(ckpt_dir)
    averaged_model(run).save_pretrained(run.out / "model")


def log(run: Run, row: dict[str, Any]) -> None:
    if run.acc.is_main_process:
        with (run.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


def _fit_steps(run: Run, minutes: float) -> int:
    """Time a few throw-away steps (weights and optimiser restored afterwards) to turn minutes into steps."""
    saved_model = copy.deepcopy(run.net.state_dict())
    saved_optimizer = copy.deepcopy(run.optimizer.state_dict())
    times = []
    for s in range(6):
        t = time.time()
        train_step(run, s)
        if run.acc.device.type == "cuda":  # kernels run asynchronously: wait for the step's own
            torch.cuda.synchronize(run.acc.device)
        times.append(time.time() - t)
    run.net.load_state_dict(saved_model)
    run.optimizer.load_state_dict(saved_optimizer)
    per_step = float(np.median(times[2:])) * 1.12  # evaluation, sampling and logging overhead
    return max(run.cfg.warmup_steps + 1, int(minutes * 60 / per_step))
