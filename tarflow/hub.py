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


def load_reference(path: str | Path, **overrides: Any) -> TarFlow:
    """Load a reference-format .pth checkpoint (strictly), inferring the architecture."""
    state = read_state_dict(path)
    cfg = infer_config(state, str(path), **overrides)
    model = TarFlow(**cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path} does not match the inferred architecture {cfg}: {e}") from None
    return model.eval()


def load_model(source: str | Path, device: str | torch.device | None = None, **overrides: Any) -> TarFlow:
    """Load a model from a folder in our format, a reference .pth file, a Hub repo id in our
    format, or ``owner/repo/file.pth`` for a reference checkpoint on the Hub."""
    source = str(source)
    path = Path(source)
    if path.is_file() and path.suffix in REFERENCE_SUFFIXES:
        model = load_reference(path, **overrides)
    elif path.is_dir():
        if (path / "config.json").is_file():
            model = _from_pretrained(source)
        else:
            pths = sorted(p for p in path.iterdir() if p.suffix in REFERENCE_SUFFIXES)
            if len(pths) != 1:
                raise ModelLoadError(f"{path} has no config.json and {len(pths)} .pth files; point at one model")
            model = load_reference(pths[0], **overrides)
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
