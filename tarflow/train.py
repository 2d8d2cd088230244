"""Training with accelerate: one command from a laptop CPU to many GPUs.

    python -m tarflow train --config configs/mnist.json [--out runs/mnist] [--minutes 60] [--stop-after 170]
    accelerate launch -m tarflow train --config configs/mnist.json

Every random draw of a step (which images, the noise added, which labels are dropped) is a pure
function of (seed, step, process), so a run resumed from a checkpoint continues exactly as if it
had never stopped: the checkpoint holds the weights, the optimiser, the EMA and the step, and the
learning-rate schedule is a function of the step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tarflow.model import TarFlow


@dataclass
class TrainConfig:
    # data
    dataset: str = "mnist"
    data_dir: str = "data"
    hflip: bool = False
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
    # logistics
    out: str = "runs/mnist"
    log_every: int = 25
    eval_every: int = 500  # held-out bits/dim and a sample grid
    checkpoint_minutes: float = 5.0
    eval_images: int = 1000
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
        if "betas" in raw:
            raw = {**raw, "betas": tuple(raw["betas"])}
        cfg = cls(**raw)
        if cfg.noise not in ("gaussian", "uniform"):
            raise ValueError(f"noise must be 'gaussian' or 'uniform', got {cfg.noise!r}")
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


def batch_indices(cfg: TrainConfig, n: int, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This process's share of the global batch of ``step``: epochs are seeded permutations."""
    per_epoch = max(1, n // cfg.batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=_generator(cfg.seed, epoch))
    if n < cfg.batch_size:  # tiny datasets: sample with replacement
        perm = torch.randint(n, (cfg.batch_size,), generator=_generator(cfg.seed, epoch, 1))
        k = 0
    return perm[k * cfg.batch_size : (k + 1) * cfg.batch_size][rank::world]


def make_batch(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, step: int, rank: int = 0,
               world: int = 1, num_classes: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (N, C, H, W) -> the noisy [-1, 1] batch and labels (dropped ones set to -1)."""
    idx = batch_indices(cfg, len(images), step, rank, world)
    g = _generator(cfg.seed, step, rank, 7)
    x = images[idx].float()
    if cfg.noise == "gaussian":
        x = x / 127.5 - 1 + cfg.noise_std * torch.randn(x.shape, generator=g)
    else:
        x = (x + torch.rand(x.shape, generator=g)) / 128.0 - 1
    if cfg.hflip:
        flip = torch.rand(len(idx), generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if not num_classes:
        return x, None
    y = labels[idx].clone()
    y[torch.rand(len(idx), generator=g) < cfg.drop_label] = -1
    return x, y


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


def build_model(cfg: TrainConfig, image_size: int, channels: int, class_names: list[str]) -> TarFlow:
    num_classes = len(class_names) if cfg.conditional else 0
    return TarFlow(
        channels, image_size, cfg.patch_size, cfg.channels, cfg.num_blocks, cfg.layers_per_block, nvp=cfg.nvp,
        num_classes=num_classes, head_dim=cfg.head_dim, expansion=cfg.expansion,
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
    from tarflow.likelihood import bits_per_dim, log_prob, to_bits_per_dim

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


def sample_grid(model: TarFlow, cfg: TrainConfig, path: Path, per_class: int = 8) -> None:
    """A fixed-noise grid, one row per class (or 8 rows unconditional), denoised if noise-augmented."""
    from tarflow.images import grid, save_png
    from tarflow.sampling import SampleSettings, sample

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


def train(cfg: TrainConfig, minutes: float | None = None, stop_after: float | None = None,
          max_steps: int | None = None, quiet: bool = False) -> Path:
    """Train (or resume) the run in ``cfg.out``; return the folder of the exported model.

    ``minutes`` fits total_steps to a time budget (measured on the first steps) when the config
    does not fix it; ``stop_after`` ends this process cleanly with a checkpoint after that many
    minutes (for sessions with a time limit); ``max_steps`` stops after that global step.
    """
    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    from tarflow.data import load

    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_bf16 = cfg.bf16 and torch.cuda.is_available()
    acc = Accelerator(mixed_precision="bf16" if use_bf16 else "no")
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    data = load(cfg.dataset, cfg.data_dir)
    images, labels = data.tensors("train")
    test_images, test_labels = data.tensors("test")
    test_images, test_labels = test_images[: cfg.eval_images], test_labels[: cfg.eval_images]
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, data.image_size, data.channels, data.class_names)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "embed" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    step = 0
    if (ckpt_dir / "train_state.pt").is_file():
        state = torch.load(ckpt_dir / "train_state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(load_file(ckpt_dir / "model.safetensors"), strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        step = int(state["step"])
        saved = TrainConfig.from_checkpoint(state["config"])
        cfg.total_steps = cfg.total_steps or saved.total_steps
        if not quiet:
            acc.print(f"resumed {out} at step {step} of {cfg.total_steps}")
    model, optimizer = acc.prepare(model, optimizer)
    device = acc.device
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    metrics_path = out / "metrics.jsonl"

    def export() -> Path:
        target = out / "model"
        m = acc.unwrap_model(model)
        if ema is not None:
            m = build_model(cfg, data.image_size, data.channels, data.class_names)
            m.load_state_dict({k: v.to(m.state_dict()[k].dtype) for k, v in ema.shadow.items()})
        m.save_pretrained(target)
        return target

    def checkpoint() -> None:
        if not acc.is_main_process:
            return
        tmp = out / "checkpoint.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        raw = acc.unwrap_model(model)
        save_file({k: v.detach().cpu().contiguous() for k, v in raw.state_dict().items()}, tmp / "model.safetensors")
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "config": cfg.to_dict(),
                    "ema": ema.state_dict() if ema is not None else None}, tmp / "train_state.pt")
        if ckpt_dir.exists():
            for f in ckpt_dir.iterdir():
                f.unlink()
            ckpt_dir.rmdir()
        tmp.rename(ckpt_dir)  # an interrupted save never leaves a half-written checkpoint behind
        export()

    def log(row: dict[str, Any]) -> None:
        if acc.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def eval_and_sample() -> dict[str, float]:
        target = acc.unwrap_model(model)
        if ema is not None:
            target = build_model(cfg, data.image_size, data.channels, data.class_names).to(device)
            target.load_state_dict({k: v.to(device) for k, v in ema.shadow.items()})
        target.eval()
        res = evaluate(target, cfg, test_images, test_labels)
        sample_grid(target, cfg, out / "samples" / f"step_{step:07d}.png")
        acc.unwrap_model(model).train()
        return res

    if not cfg.total_steps:
        if not minutes:
            raise ValueError("set total_steps in the config or give --minutes")
        cfg.total_steps = _fit_steps(model, optimizer, cfg, images, labels, data.num_classes, acc, minutes)
        if not quiet:
            acc.print(f"fitted the schedule to {minutes} min: {cfg.total_steps} steps")
    last_ckpt = time.time()
    end = cfg.total_steps if max_steps is None else min(cfg.total_steps, max_steps)
    model.train()
    bar = tqdm(total=end, initial=step, desc="training", disable=quiet or not acc.is_main_process, unit="step")
    window_t, window_n = time.time(), 0
    while step < end:
        x, y = make_batch(cfg, images, labels, step, acc.process_index, acc.num_processes, data.num_classes)
        x = x.to(device)
        y = y.to(device) if y is not None else None
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        with acc.autocast():
            z, _, logdets = model(x, y)
            loss = acc.unwrap_model(model).get_loss(z, logdets)
        if not cfg.nvp:  # running prior variance, averaged over processes as in the reference
            acc.unwrap_model(model).update_prior(acc.gather(z.detach().pow(2).mean(0, keepdim=True)).sqrt())
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip else None
        optimizer.step()
        if ema is not None:
            ema.update(acc.unwrap_model(model))
        step += 1
        window_n += len(x) * acc.num_processes
        bar.update(1)
        if step % cfg.log_every == 0 or step == end:
            rate = window_n / max(1e-9, time.time() - window_t)
            row = {"step": step, "loss": loss.item(), "lr": lr_at(cfg, step - 1), "images_per_s": round(rate, 1),
                   "grad_norm": float(grad_norm) if grad_norm is not None else None,
                   "minutes": round((time.time() - started) / 60, 2)}
            log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}")
            window_t, window_n = time.time(), 0
        if acc.is_main_process and (step % cfg.eval_every == 0 or step == end):
            res = eval_and_sample()
            log({"step": step, **{f"eval_{k}": v for k, v in res.items()}})
            plot_curves(metrics_path, out / "loss.png")
            window_t, window_n = time.time(), 0
        out_of_time = stop_after is not None and time.time() - started > stop_after * 60
        if time.time() - last_ckpt > cfg.checkpoint_minutes * 60 and not out_of_time and step < end:
            checkpoint()
            last_ckpt = time.time()
        if out_of_time:
            if not quiet:
                acc.print(f"stopping at step {step} (time limit); resume with the same command")
            break
    bar.close()
    acc.wait_for_everyone()
    checkpoint()  # the one final save, whether the run ended or ran out of time
    return out / "model"


def _fit_steps(model, optimizer, cfg, images, labels, num_classes, acc, minutes: float) -> int:
    """Time a few throw-away steps (weights restored afterwards) to turn minutes into steps."""
    import copy

    saved_model = copy.deepcopy(acc.unwrap_model(model).state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    times = []
    for s in range(6):
        x, y = make_batch(cfg, images, labels, s, acc.process_index, acc.num_processes, num_classes)
        t = time.time()
        with acc.autocast():
            z, _, logdets = model(x.to(acc.device), y.to(acc.device) if y is not None else None)
            loss = acc.unwrap_model(model).get_loss(z, logdets)
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        optimizer.step()
        times.append(time.time() - t)
    acc.unwrap_model(model).load_state_dict(saved_model)
    optimizer.load_state_dict(saved_opt)
    per_step = float(np.median(times[2:])) * 1.12  # evaluation, sampling and logging overhead
    return max(cfg.warmup_steps + 1, int(minutes * 60 / per_step))
