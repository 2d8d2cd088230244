"""Loading models: our format (config.json + model.safetensors, locally or on the Hugging Face Hub)
and the reference format (a plain state dict saved with torch.save, as Apple released it).

Nothing here executes code from a checkpoint: safetensors carries only tensors, and .pth files
are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tarflow.model import Architecture, TarFlow

REFERENCE_SUFFIXES = (".pth", ".pt")
# Reference checkpoints are named <dataset>_model_<patch>_<width>_<blocks>_<layers>_<noise|uniform>.pth
_REFERENCE_NAME = re.compile(
    r"(?P<dataset>[A-Za-z0-9]+)_model_(?P<patch>\d+)_(?P<channels>\d+)_(?P<blocks>\d+)_(?P<layers>\d+)_(?P<noise>\d+(?:\.\d+)?|uniform)"
)
KNOWN_CLASS_NAMES = {"afhq": ["cat", "dog", "wild"]}


class ModelLoadError(Exception):
    """A model could not be loaded; the message says why and what to do."""


ConfigCheck = Callable[[dict[str, Any]], None]


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def infer_config(state_dict: dict[str, torch.Tensor], filename: str | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """TarFlow keyword arguments (the Architecture's fields, then metadata) for a reference-layout
    state dict, from tensor shapes (and the reference file-name convention, when it matches).
    ``overrides`` win."""
    try:
        num_blocks = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        layers = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("blocks.0.attn_blocks."))
        w_in = state_dict["blocks.0.proj_in.weight"]
        num_tokens = state_dict["blocks.0.pos_embed"].shape[0]
        out_dim = state_dict["blocks.0.proj_out.weight"].shape[0]
        hidden = state_dict["blocks.0.attn_blocks.0.mlp.main.0.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as e:
        raise ModelLoadError(f"not a TarFlow state dict in the reference layout (missing {e})") from None
    channels, token_dim = w_in.shape
    meta = _REFERENCE_NAME.search(Path(filename).name) if filename else None
    cfg: dict[str, Any] = {
        "channels": channels,
        "num_blocks": num_blocks,
        "layers_per_block": layers,
        "nvp": out_dim == 2 * token_dim,
        "num_classes": state_dict["blocks.0.class_embed"].shape[0] if "blocks.0.class_embed" in state_dict else 0,
        "expansion": hidden // channels,
        "head_dim": 64,  # the reference's fixed head size; not recoverable from shapes
    }
    if meta:
        cfg["patch_size"] = int(meta["patch"])
        cfg["noise_std"] = 0.0 if meta["noise"] == "uniform" else float(meta["noise"])
        cfg["dataset"] = meta["dataset"]
        if meta["dataset"] in KNOWN_CLASS_NAMES and len(KNOWN_CLASS_NAMES[meta["dataset"]]) == cfg["num_classes"]:
            cfg["class_names"] = KNOWN_CLASS_NAMES[meta["dataset"]]
    cfg.update(overrides)
    if "patch_size" in cfg and "in_channels" not in cfg:
        cfg["in_channels"] = token_dim // cfg["patch_size"] ** 2
    elif "in_channels" not in cfg:
        # D = C * p * p: prefer RGB, then greyscale.
        cfg["in_channels"] = 3 if token_dim % 3 == 0 and _is_square(token_dim // 3) else 1
    if "patch_size" not in cfg:
        if token_dim % cfg["in_channels"] or not _is_square(token_dim // cfg["in_channels"]):
            raise ModelLoadError(f"cannot split a token of {token_dim} values into {cfg['in_channels']} channels; "
                                 "pass in_channels and patch_size")
        cfg["patch_size"] = math.isqrt(token_dim // cfg["in_channels"])
    if not _is_square(num_tokens):
        raise ModelLoadError(f"{num_tokens} tokens do not form a square image")
    cfg["img_size"] = math.isqrt(num_tokens) * cfg["patch_size"]
    if cfg["in_channels"] * cfg["patch_size"] ** 2 != token_dim:
        raise ModelLoadError(f"in_channels={cfg['in_channels']} and patch_size={cfg['patch_size']} "
                             f"do not match tokens of {token_dim} values")
    try:  # every architecture field inferred or given, and consistent; the rest is metadata
        arch = Architecture(**{name: cfg.pop(name) for name in Architecture.field_names()})
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"cannot infer the architecture: {e}") from None
    return {**dataclasses.asdict(arch), **cfg}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .pth state dict safely (tensors only; a pickle that would run code is refused)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"refused to load {path}: not a plain tensor checkpoint ({first})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors")
    return obj


def load_reference(path: str | Path, check: ConfigCheck | None = None, **overrides: Any) -> TarFlow:
    """Load a reference-format .pth checkpoint (strictly), inferring the architecture; ``check``
    sees the architecture before the model is built."""
    state = read_state_dict(path)
    cfg = infer_config(state, str(path), **overrides)
    if check is not None:
        check(cfg)
    model = TarFlow(**cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path} does not match the inferred architecture {cfg}: {e}") from None
    return model.eval()


def load_model(source: str | Path, device: str | torch.device | None = None, check: ConfigCheck | None = None,
               **overrides: Any) -> TarFlow:
    """Load a model from a folder in our format, a reference .pth file, a Hub repo id in our
    format, or ``owner/repo/file.pth`` for a reference checkpoint on the Hub. ``check`` (for
    local sources) sees the architecture before the model is built."""
    source = str(source)
    path = Path(source)
    if path.is_file() and path.suffix in REFERENCE_SUFFIXES:
        model = load_reference(path, check, **overrides)
    elif path.is_dir():
        if (path / "config.json").is_file():
            if check is not None:
                check(_read_config(path / "config.json"))
            model = _from_pretrained(source)
        else:
            pths = sorted(p for p in path.iterdir() if p.suffix in REFERENCE_SUFFIXES)
            if len(pths) != 1:
                raise ModelLoadError(f"{path} has no config.json and {len(pths)} .pth files; point at one model")
            model = load_reference(pths[0], check, **overrides)
    elif path.exists() or source.startswith((".", "/", "~")):
        raise ModelLoadError(f"{source} is neither a model folder nor a .pth checkpoint")
    elif source.endswith(REFERENCE_SUFFIXES) and source.count("/") >= 2:
        owner, name, filename = source.split("/", 2)
        model = load_reference(_hub_file(f"{owner}/{name}", filename), **overrides)
    else:
        model = _from_pretrained(source)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _hub_file(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # network, auth, missing file: all end the same way for the user
        raise ModelLoadError(f"could not fetch {filename} from the Hub repo {repo_id}: {_short(e)}") from None


def _from_pretrained(source: str) -> TarFlow:
    try:
        # The mixin prints a line when loading from a folder; keep stdout clean for the CLI.
        with contextlib.redirect_stdout(io.StringIO()):
            return TarFlow.from_pretrained(source, strict=True)
    except Exception as e:
        if os.path.isdir(source):
            raise ModelLoadError(f"could not load the model folder {source}: {_short(e)}") from None
        raise ModelLoadError(f"{source} is not a local folder, and the Hub repo {source} could not be loaded: "
                             f"{_short(e)}") from None


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def convert(src: str | Path, out_dir: str | Path, **overrides: Any) -> Path:
    """Reference .pth -> our format (config.json + model.safetensors) in ``out_dir``."""
    model = load_reference(src, **overrides)
    model.save_pretrained(out_dir)
    return Path(out_dir)


# ----------------------------------------------------------------------------------------------
# Checked downloads: for a server that fetches Hub models named by strangers. Every size is known
# before it costs anything: file sizes from the Hub's metadata before downloading, and the
# architecture (hence the memory of the weights) from config.json before a model is built.

HUB_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@dataclass(frozen=True)
class HubLimits:
    """Largest Hub model a server will fetch and build."""

    max_file_bytes: int = 2 << 30  # any one downloaded file
    max_config_bytes: int = 64 << 10
    max_params: int = 1_000_000_000
    max_tokens: int = 4096
    max_token_dim: int = 3 * 16 * 16
    max_channels: int = 4096
    max_blocks: int = 32
    max_layers: int = 32
    max_expansion: int = 16
    max_classes: int = 10_000


def split_hub_id(source: str) -> tuple[str, str | None]:
    """``owner/repo`` or ``owner/repo/file.pth`` -> (repo id, file name or None); ModelLoadError
    with a plain sentence for anything else (a URL, a path, ``..``, odd characters)."""
    parts = source.split("/")
    is_file = len(parts) == 3 and parts[2].endswith(REFERENCE_SUFFIXES)
    if not (len(parts) == 2 or is_file) or not all(HUB_ID_PART.fullmatch(p) for p in parts) \
            or any(".." in p or p.endswith(".") for p in parts):
        raise ModelLoadError("not a Hugging Face Hub model id: use owner/repo (our format) or "
                             "owner/repo/file.pth (a reference checkpoint)")
    return f"{parts[0]}/{parts[1]}", (parts[2] if is_file else None)


def parameter_count(cfg: dict[str, Any]) -> int:
    """Parameters and buffers (numbers held in memory) of ``TarFlow(**cfg)``, counted from the
    configuration alone, without building anything."""
    w, e, k = int(cfg["channels"]), int(cfg.get("expansion", 4)), int(cfg.get("num_classes", 0))
    t = (int(cfg["img_size"]) // int(cfg["patch_size"])) ** 2
    d = int(cfg["in_channels"]) * int(cfg["patch_size"]) ** 2
    out = 2 * d if cfg.get("nvp", True) else d
    layer = 2 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (w * e * w + e * w) + (e * w * w + w)
    block = (d * w + w) + t * w + k * w + int(cfg["layers_per_block"]) * layer + (w * out + out) + t * t
    return int(cfg["num_blocks"]) * block + t * d


def check_config(cfg: dict[str, Any], limits: HubLimits) -> int:
    """Refuse an architecture over ``limits`` (ModelLoadError); returns its parameter count."""
    if not isinstance(cfg, dict):
        raise ModelLoadError("config.json does not describe a TarFlow model")
    cfg = {"num_classes": 0, "head_dim": 64, "expansion": 4, **cfg}
    sizes = {"in_channels": (1, 16), "img_size": (1, 4096), "patch_size": (1, 64),
             "channels": (1, limits.max_channels), "num_blocks": (1, limits.max_blocks),
             "layers_per_block": (1, limits.max_layers), "num_classes": (0, limits.max_classes),
             "head_dim": (1, limits.max_channels), "expansion": (1, limits.max_expansion)}
    for key, (lo, hi) in sizes.items():
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ModelLoadError(f"config.json: {key} must be a whole number from {lo} to {hi}")
    tokens = (cfg["img_size"] // cfg["patch_size"]) ** 2
    token_dim = cfg["in_channels"] * cfg["patch_size"] ** 2
    if tokens > limits.max_tokens or token_dim > limits.max_token_dim:
        raise ModelLoadError(f"config.json: {tokens} tokens of {token_dim} values is over this server's "
                             f"limit ({limits.max_tokens} tokens of up to {limits.max_token_dim})")
    params = parameter_count(cfg)
    if params > limits.max_params:
        raise ModelLoadError(f"the model has {params / 1e6:.0f} M parameters; this server loads at most "
                             f"{limits.max_params / 1e6:.0f} M")
    return params


def _read_config(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"config.json cannot be read: {_short(e)}") from None


def remote_file_size(repo_id: str, filename: str) -> int:
    """Size in bytes of a file on the Hub, from its metadata (nothing is downloaded)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename))
    except Exception as e:  # network, auth, missing file: all end the same way for the user
        raise ModelLoadError(f"could not find {filename} in the Hub repo {repo_id}: {_short(e)}") from None
    if meta.size is None:
        raise ModelLoadError(f"the Hub does not report the size of {filename} in {repo_id}; not downloading it")
    return int(meta.size)


def _download_checked(repo_id: str, filename: str, max_bytes: int, cache_dir: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    size = remote_file_size(repo_id, filename)
    if size > max_bytes:
        raise ModelLoadError(f"{filename} in {repo_id} is {size / 2**20:.0f} MB; this server downloads "
                             f"at most {max_bytes / 2**20:.0f} MB per file")
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
    except Exception as e:
        raise ModelLoadError(f"could not fetch {filename} from the Hub repo {repo_id}: {_short(e)}") from None


def fetch_checked(source: str, limits: HubLimits, cache_dir: str | None = None) -> Path:
    """Download a Hub model within ``limits`` and return its local path (a .pth file, or a folder
    in our format) for ``load_model(path, check=...)``. For our format the config is fetched and
    checked first, so oversized weights are never downloaded."""
    repo_id, filename = split_hub_id(source)
    if filename is not None:
        return _download_checked(repo_id, filename, limits.max_file_bytes, cache_dir)
    config = _download_checked(repo_id, "config.json", limits.max_config_bytes, cache_dir)
    check_config(_read_config(config), limits)
    weights = _download_checked(repo_id, "model.safetensors", limits.max_file_bytes, cache_dir)
    if weights.parent != config.parent:
        raise ModelLoadError(f"the Hub repo {repo_id} changed while it was being downloaded; try again")
    return config.parent
