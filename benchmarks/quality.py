"""Sample quality judged by an independent classifier, next to real and blurred real images.

    python benchmarks/quality.py --model checkpoints/mnist [--dataset mnist] [--per-class 100]
        [--guidance G] [--no-denoise] [--retrain [--judge-epochs N]]

A small CNN is trained once per dataset on its training split (kept in benchmarks/classifiers/,
about 1 MB in fp16) and never sees samples. For samples drawn at the model's recommended settings
it reports the share classified as the class they were conditioned on, and the Frechet distance
between the classifier's penultimate features of the samples and of the held-out images. The
same two numbers for real training images and for 3x3-blurred ones are printed as yardsticks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLASSIFIERS = Path(__file__).resolve().parent / "classifiers"
# How each judge is trained. Mirrored images keep their label for clothes, not for digits or emoji.
# Emoji categories are far from balanced (People & Body is 60%): that judge weighs its loss by inverse
# class frequency, so that it does not learn to favour the big category over the samples' uniform mix.
# emoji2 has twice emoji's images: half the epochs give its judge as many steps. A dataset with a label
# set ("emoji2:subcategory") is judged by its plain dataset's judge, on the categories.
JUDGE_RECIPES = {"mnist": {"epochs": 8}, "fashion-mnist": {"epochs": 16, "hflip": True},
                 "emoji": {"epochs": 24, "balanced": True}, "emoji2": {"epochs": 12, "balanced": True}}

from tarflow.data import ImageData, load, split_name  # noqa: E402
from tarflow.hub import load_model  # noqa: E402
from tarflow.jacobi import Jacobi  # noqa: E402
from tarflow.sampling import SampleSettings, sample  # noqa: E402


class Judge(nn.Module):
    """Two conv stages of two 3x3 convolutions each, then 128 features and a linear classifier."""

    def __init__(self, channels: int, num_classes: int, size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@contextmanager
def one_thread():
    """The judge's small convolutions run faster on one thread than on two here. Only the judge runs
    like that: sampling keeps the process's threads (it inverts two halves of a batch side by side)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def balanced_pick(labels: torch.Tensor, per_class: int, seed: int = 1) -> torch.Tensor:
    """Indices of up to ``per_class`` random images of every class: real-image yardsticks with the
    same class mix as the samples (emoji categories are far from balanced)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    return torch.cat([order[labels[order] == c][:per_class] for c in labels.unique()])


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 127.5 - 1


def shift(x: torch.Tensor, g: torch.Generator, max_px: int = 2) -> torch.Tensor:
    """Random translations (white/black borders replicated) so the judge does not memorise positions."""
    dx, dy = (torch.randint(-max_px, max_px + 1, (2,), generator=g)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_judge(dataset: str, data_dir: str, epochs: int | None = None) -> Judge:
    recipe = JUDGE_RECIPES.get(dataset, {})
    epochs = epochs or recipe.get("epochs", 8)
    hflip = recipe.get("hflip", False)
    data = load(dataset, data_dir)
    x, y = data.tensors("train")
    x = to_float(x)
    torch.manual_seed(0)
    judge = Judge(data.channels, data.num_classes, data.image_size)
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    weight = None
    if recipe.get("balanced"):
        counts = torch.bincount(y, minlength=data.num_classes).float().clamp(min=1)
        weight = counts.sum() / (data.num_classes * counts)
    g = torch.Generator().manual_seed(0)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t = time.time()
    with one_thread():
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x) - 127, 128):
                idx = perm[i : i + 128]
                xb = shift(x[idx], g)
                if hflip:
                    flip = torch.rand(len(idx), generator=g) < 0.5
                    xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                loss = F.cross_entropy(judge(xb), y[idx], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    judge.eval()
    report = judge_report(judge, data)
    print(f"trained the {dataset} judge in {time.time() - t:.0f}s: held-out accuracy "
          f"{report['held_out_accuracy']:.2%}, mean per-class accuracy {report['held_out_mean_class_accuracy']:.2%}")
    CLASSIFIERS.mkdir(exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.half() for k, v in judge.state_dict().items()}, CLASSIFIERS / f"{dataset}.safetensors")
    (CLASSIFIERS / f"{dataset}.json").write_text(json.dumps(
        {"dataset": dataset, "channels": data.channels, "num_classes": data.num_classes, "size": data.image_size,
         **report, "epochs": epochs, "hflip": hflip, "balanced": bool(recipe.get("balanced"))}, indent=2))
    return judge


def judge_report(judge: Judge, data: ImageData) -> dict:
    """Held-out accuracy overall, per class, class-balanced, and per drawing style where the data has styles."""
    x, y = data.tensors("test")
    pred = predict(judge, to_float(x))
    per_class = class_accuracy(pred, y, data.num_classes)
    report = {"held_out_accuracy": round((pred == y).float().mean().item(), 4),
              "held_out_mean_class_accuracy": round(float(np.nanmean(per_class)), 4),
              "held_out_class_accuracy": {n: round(a, 4) for n, a in zip(data.class_names, per_class)},
              "held_out_images": len(y)}
    if "style" in data.extra:
        style = torch.from_numpy(data.split("test").extra["style"])
        report["held_out_style_accuracy"] = {
            str(n): round((pred == y)[style == s].float().mean().item(), 4)
            for s, n in enumerate(data.extra["style_names"])}
    return report


def load_judge(dataset: str, data_dir: str, retrain: bool = False, epochs: int | None = None) -> Judge:
    dataset = split_name(dataset)[0]  # a label set is judged on its dataset's own labels
    path = CLASSIFIERS / f"{dataset}.safetensors"
    if retrain or not path.is_file():
        return train_judge(dataset, data_dir, epochs)
    from safetensors.torch import load_file

    meta = json.loads((CLASSIFIERS / f"{dataset}.json").read_text())
    judge = Judge(meta["channels"], meta["num_classes"], meta["size"])
    judge.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return judge.eval()


@torch.no_grad()
def predict(judge: Judge, x: torch.Tensor) -> torch.Tensor:
    with one_thread():
        return torch.cat([judge(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])


def accuracy(judge: Judge, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(judge, x) == y).float().mean().item()


def balanced_accuracy(judge: Judge, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over classes of the share of that class's images classified right."""
    return float(np.nanmean(class_accuracy(predict(judge, x), y, int(y.max()) + 1)))


def class_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    """Per class, the share of its images predicted as it (nan for a class without images)."""
    return [(pred[y == c] == c).float().mean().item() if (y == c).any() else float("nan")
            for c in range(num_classes)]


@torch.no_grad()
def features(judge: Judge, x: torch.Tensor) -> np.ndarray:
    with one_thread():
        return torch.cat([judge.features(x[i : i + 500]) for i in range(0, len(x), 500)]).double().numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cb @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def blur3(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = torch.full((c, 1, 3, 3), 1 / 9)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)


def sample_plan(data: ImageData, label_set: str | None, num_classes: int, per_class: int,
                seed: int = 2) -> tuple[list[int], torch.Tensor]:
    """The classes to condition samples on, ``per_class`` for each class the judge knows, and the judge's
    class of each model class. A model of a finer label set (emoji2:subcategory) gets, within each
    category, subcategories drawn in proportion to their training images: the category as the data has it."""
    if not num_classes:
        return [], torch.zeros(0, dtype=torch.int64)
    if label_set is None:
        return [c for c in range(num_classes) for _ in range(per_class)], torch.arange(num_classes)
    judged = torch.from_numpy(data.extra[f"{label_set}_category"]).long()
    if len(judged) != num_classes:
        raise ValueError(f"the model has {num_classes} classes but {data.name}:{label_set} has {len(judged)}")
    fine = torch.from_numpy(data.split("train").extra[label_set]).long()
    counts = torch.bincount(fine, minlength=num_classes).double()
    g = torch.Generator().manual_seed(seed)
    classes = []
    for c in range(data.num_classes):
        weights = counts * (judged == c)
        classes += torch.multinomial(weights, per_class, replacement=True, generator=g).tolist()
    return classes, judged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default=None, help="default: the model's dataset")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's recommended")
    p.add_argument("--temperature", type=float, default=None, help="prior temperature (default: the model's)")
    p.add_argument("--annealed", action="store_true", help="grow the guidance weight over each block's tokens")
    p.add_argument("--guide-what", default="ab", choices=["a", "b", "ab"],
                   help="guide the log-scale a, the shift b, or both (the default)")
    p.add_argument("--attn-temp", type=float, default=None, help="attention temperature of the guided pass")
    p.add_argument("--no-denoise", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="retrain the judge")
    p.add_argument("--judge-epochs", type=int, default=None, help="with --retrain (default: JUDGE_RECIPES)")
    p.add_argument("--decode", default="sequential", choices=["sequential", "jacobi"])
    p.add_argument("--jacobi-tol", type=float, default=1e-3)
    p.add_argument("--jacobi-sequential-first", action="store_true")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--device", default="cpu", help="where the model samples (the judge runs on the CPU)")
    args = p.parse_args()

    model = load_model(args.model, device=args.device)
    dataset = args.dataset or model.dataset
    judge = load_judge(dataset, args.data_dir, args.retrain, args.judge_epochs)
    data = load(split_name(dataset)[0], args.data_dir)  # real images keep the labels the judge knows
    xt_u8, yt = data.tensors("test")
    xt = to_float(xt_u8)
    x_train_u8, y_train = data.tensors("train")
    classes, judged = sample_plan(data, split_name(dataset)[1], model.num_classes, args.per_class)
    n = len(classes) or args.per_class
    g = torch.Generator().manual_seed(1)
    pick = torch.randperm(len(x_train_u8), generator=g)[:n]
    real, real_y = to_float(x_train_u8[pick]), y_train[pick]
    f_test = features(judge, xt)

    t = time.time()
    s = SampleSettings(num=n, classes=classes or None, seed=args.seed, guidance=args.guidance,
                       annealed=args.annealed, guide_what=args.guide_what, attn_temp=args.attn_temp,
                       temperature=args.temperature,
                       denoise=not args.no_denoise, decode=args.decode,
                       jacobi=Jacobi(args.jacobi_tol, sequential_first=args.jacobi_sequential_first))
    out = sample(model, s)
    secs = time.time() - t
    gen = out.images.clamp(-1, 1)
    rows = {
        "samples": (accuracy(judge, gen, judged[out.labels]) if model.num_classes else float("nan"),
                    frechet(features(judge, gen), f_test)),
        "real (train split)": (accuracy(judge, real, real_y), frechet(features(judge, real), f_test)),
        "real, 3x3 blurred": (accuracy(judge, blur3(real), real_y), frechet(features(judge, blur3(real)), f_test)),
    }
    if model.num_classes:  # the samples' class mix (the real rows follow the data's)
        fair = balanced_pick(y_train, args.per_class)
        rows["real, class-balanced"] = (accuracy(judge, to_float(x_train_u8[fair]), y_train[fair]), float("nan"))
    per_class = {}
    if model.num_classes:  # which classes the model draws well (the app's default classes come from this)
        names = data.class_names
        hits = class_accuracy(predict(judge, gen), judged[out.labels], len(names))
        per_class = {name: float(h) for name, h in zip(names, hits) if not np.isnan(h)}
    g_used = s.guidance_for(model)
    how = (" (annealed)" if g_used.annealed else "") + (f" on {g_used.what} only" if g_used.what != "ab" else "") + (
        f", attention temperature {g_used.attn_temp:g}" if g_used.attn_temp != 1 else "")
    print(f"model {args.model} on {dataset}: {n} samples at guidance {g_used.scale}{how}, "
          f"prior temperature {s.temperature_for(model):g}, "
          f"denoise {not args.no_denoise}, decode {args.decode}"
          f"{f' (tol {args.jacobi_tol:g})' if args.decode == 'jacobi' else ''}, drawn in {secs:.1f}s; "
          f"judged against {len(xt)} held-out images")
    print(f"{'':22s} {'class-consistent':>16s} {'Frechet distance':>17s}")
    for name, (acc, fd) in rows.items():
        print(f"{name:22s} {acc:16.1%} {fd:17.2f}")
    if per_class:
        print("samples judged their class, per class: " + ", ".join(f"{k} {v:.0%}" for k, v in per_class.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"model": args.model, "dataset": dataset, "guidance": g_used.scale, "denoise": not args.no_denoise,
             "decode": args.decode, "jacobi_tol": args.jacobi_tol if args.decode == "jacobi" else None,
             "num_samples": n, **{k: {"class_consistent": a, "frechet": f} for k, (a, f) in rows.items()},
             "per_class": per_class}, indent=2))


if __name__ == "__main__":
    main()
