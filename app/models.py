"""Which models the app offers, and loading them once per process.

Three kinds of model source:

* local folders in our format, discovered under ``checkpoints/`` (bundled) and under the folder named
  by ``TARFLOW_MODELS_DIR`` (extra ones, e.g. for tests);
* reference-format checkpoints on the Hugging Face Hub or Apple's CDN, listed in ``CATALOGUE`` and
  fetched only when the user picks one;
* anything the user types: a local folder or ``.pth`` file, or a Hub id. On a public server
  (``SPACE_ID`` set) local paths are refused, and other Hub ids only work for the owners named in
  ``TARFLOW_HUB_OWNERS`` (or "any"); those are checked (file sizes from the Hub's metadata, the
  architecture from config.json) before anything is downloaded or built, and downloads go to a
  cache folder kept under ``TARFLOW_CACHE_GB``.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from app import storage
from app.limits import public
from tarflow.hub import HubLimits, ModelLoadError, check_config, fetch_checked, load_model, split_hub_id
from tarflow.model import TarFlow

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DIR = ROOT / "checkpoints"
PREFERRED_ORDER = ("mnist", "fashion-mnist", "emoji")
# Models held in memory at once; the bundled ones are a few MB, the reference ones up to ~2 GB.
MAX_LOADED = int(os.environ.get("TARFLOW_MAX_LOADED_MODELS", "4"))
# float64 copies (for showing that inversion is exact to rounding) only for small models.
MAX_FLOAT64_PARAMS = 50_000_000
MAX_KEY_CHARS = 200  # a typed model name; Hub ids are at most 96 + 1 + 96 characters
# Listed Hub checkpoints are trusted but still fetched through the size checks (the largest,
# ImageNet 128, is about 0.9 G parameters).
LISTED_LIMITS = HubLimits(max_file_bytes=8 << 30, max_params=2_000_000_000)

Progress = Callable[[float | None, str], None]


@dataclass(frozen=True)
class ModelEntry:
    """One choice in the model picker."""

    key: str  # what the picker sends and the API accepts
    label: str  # what the picker shows
    source: str  # a folder, a Hub path, or a URL
    remote: bool = False
    note: str = ""


CATALOGUE: tuple[ModelEntry, ...] = (
    ModelEntry(
        key="encoreus/Transformer_Autoregressive_Flow/imagenet64_model_2_768_8_8_0.05.pth",
        label="ImageNet 64 · unconditional (Hub, reference format)",
        source="encoreus/Transformer_Autoregressive_Flow/imagenet64_model_2_768_8_8_0.05.pth",
        remote=True,
        note="Downloaded from the Hugging Face Hub on first use; 1024 tokens per block, so slow on a CPU.",
    ),
    ModelEntry(
        key="encoreus/Transformer_Autoregressive_Flow/imagenet_model_2_768_8_8_0.05.pth",
        label="ImageNet 64 · 1000 classes (Hub, reference format)",
        source="encoreus/Transformer_Autoregressive_Flow/imagenet_model_2_768_8_8_0.05.pth",
        remote=True,
        note="Downloaded from the Hugging Face Hub on first use; classes are numbered 0-999.",
    ),
    ModelEntry(
        key="encoreus/Transformer_Autoregressive_Flow/imagenet_model_4_1024_8_8_0.15.pth",
        label="ImageNet 128 · 1000 classes (Hub, reference format)",
        source="encoreus/Transformer_Autoregressive_Flow/imagenet_model_4_1024_8_8_0.15.pth",
        remote=True,
        note="Downloaded from the Hugging Face Hub on first use; a large model, practical only on a GPU.",
    ),
    ModelEntry(
        key="https://ml-site.cdn-apple.com/models/tarflow/afhq256/afhq_model_8_768_8_8_0.07.pth",
        label="AFHQ 256 · cat / dog / wild (Apple, 1.85 GB)",
        source="https://ml-site.cdn-apple.com/models/tarflow/afhq256/afhq_model_8_768_8_8_0.07.pth",
        remote=True,
        note="Apple's released checkpoint: a 1.85 GB download and minutes per image on a CPU; use a GPU.",
    ),
)


def _model_dirs(base: Path) -> list[Path]:
    if (base / "config.json").is_file():
        return [base]
    if not base.is_dir():
        return []
    return sorted(p.parent for p in base.glob("*/config.json"))


def _sort_key(path: Path) -> tuple[int, str]:
    name = path.name
    return (PREFERRED_ORDER.index(name) if name in PREFERRED_ORDER else len(PREFERRED_ORDER), name)


def discover() -> list[ModelEntry]:
    """Local models: bundled ones first (mnist, fashion-mnist, emoji, then by name), then the ones
    in ``TARFLOW_MODELS_DIR``. Keys are folder names, made unique when two folders share a name."""
    found: list[tuple[Path, str]] = [(p, "bundled") for p in sorted(_model_dirs(BUNDLED_DIR), key=_sort_key)]
    extra = os.environ.get("TARFLOW_MODELS_DIR")
    if extra:
        found += [(p, "extra") for p in sorted(_model_dirs(Path(extra).expanduser()), key=_sort_key)]
    entries, seen = [], set()
    for path, origin in found:
        key = path.name
        if key in seen:
            key = f"{path.parent.name}/{path.name}"
        seen.add(key)
        label = key if origin == "bundled" else f"{key} (local)"
        entries.append(ModelEntry(key=key, label=label, source=str(path)))
    return entries


def entries() -> list[ModelEntry]:
    """Everything the picker offers: local models, then the reference catalogue."""
    return discover() + list(CATALOGUE)


def default_key() -> str | None:
    local = discover()
    return local[0].key if local else None


def allow_local_paths() -> bool:
    """Typed-in local paths are fine on your own machine but not on a public Space, where they
    would let visitors probe the server's files."""
    flag = os.environ.get("TARFLOW_ALLOW_LOCAL_PATHS")
    if flag is not None:
        return flag.lower() in ("1", "true", "yes")
    return not public()


def hub_owners() -> set[str] | None:
    """Hub owners whose models a public server fetches when typed in: TARFLOW_HUB_OWNERS, comma
    separated, or "any". None means no limit (a server that is not public)."""
    value = os.environ.get("TARFLOW_HUB_OWNERS")
    if value is None:
        return None if not public() else set()
    owners = {o.strip().lower() for o in value.split(",") if o.strip()}
    return None if "any" in owners else owners


def hub_limits() -> HubLimits:
    """Size limits for typed-in Hub models: TARFLOW_HUB_MAX_MB per file, TARFLOW_HUB_MAX_PARAMS."""
    return HubLimits(max_file_bytes=int(float(os.environ.get("TARFLOW_HUB_MAX_MB", "1500")) * 2**20),
                     max_params=int(float(os.environ.get("TARFLOW_HUB_MAX_PARAMS", "4e8"))))


def _exists(path: str) -> bool:
    try:
        return Path(path).expanduser().exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def resolve(key: str) -> ModelEntry:
    """The picker's value (a listed key, or a typed path / Hub id) -> an entry. Where local paths
    are disabled the answer depends only on the text, never on which files exist."""
    key = (key or "").strip() if isinstance(key, str) else ""
    if not key:
        raise ModelLoadError("no model chosen; pick one from the list")
    if len(key) > MAX_KEY_CHARS:
        raise ModelLoadError(f"a model name is at most {MAX_KEY_CHARS} characters; pick one from the list")
    for entry in entries():
        if key in (entry.key, entry.label):
            return entry
    if key.startswith(("http://", "https://")):
        raise ModelLoadError("only the listed URLs are downloaded; for other models use a Hub id or a local folder")
    if allow_local_paths():
        if key.startswith((".", "/", "~")) or _exists(key):
            return ModelEntry(key=key, label=key, source=str(Path(key).expanduser()))
    elif key.startswith((".", "/", "~", "\\")) or "\\" in key or ":" in key:
        raise ModelLoadError("local paths are disabled on this server; pick a listed model")
    try:
        split_hub_id(key)
    except ModelLoadError:
        shown = key if len(key) <= 60 else key[:57] + "..."
        kinds = "a listed model, a local folder or" if allow_local_paths() else "a listed model or"
        raise ModelLoadError(f"{shown!r} is not {kinds} a Hugging Face Hub id (owner/name, or owner/name/file.pth; "
                             "letters, digits, '-', '_' and '.')") from None
    owners = hub_owners()
    if owners is not None and key.split("/")[0].lower() not in owners:
        raise ModelLoadError("this server offers only the listed models; other Hub models are switched off "
                             "by its operator")
    return ModelEntry(key=key, label=key, source=key, remote=True)


def model_folder(key: str) -> Path | None:
    """The local folder of a model in our format (where its measured calibration.json and
    heldout.json may lie), or None for downloads and single checkpoint files."""
    try:
        entry = resolve(key)
    except ModelLoadError:
        return None
    path = Path(entry.source)
    return path if not entry.remote and path.is_dir() else None


def pick_device() -> torch.device:
    """``TARFLOW_DEVICE`` if set, else the local CUDA GPU if there is one, else the CPU."""
    wanted = os.environ.get("TARFLOW_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _cache_dir() -> Path:
    base = os.environ.get("TARFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tarflow")
    return Path(base)


def _hub_cache_dir() -> str | None:
    """Where Hub downloads go: our bounded cache on a public server, Hugging Face's own (shared
    with your other tools) elsewhere."""
    return str(_cache_dir() / "hub") if public() else None


def cache_bytes() -> int:
    return int(float(os.environ.get("TARFLOW_CACHE_GB", "10")) * 2**30)


def prune_cache(keep: Path | None = None) -> list[Path]:
    """Keep the download cache under TARFLOW_CACHE_GB: whole checkpoints (a downloaded file, or a
    Hub repo's folder), least recently used first; ``keep`` (the one in use) stays."""
    root = _cache_dir()
    if not root.is_dir():
        return []
    hub = root / "hub"
    units = [p for p in root.iterdir() if p != hub and not p.name.endswith(".part")]
    if hub.is_dir():
        units += [p for p in hub.iterdir() if p.name.startswith("models--")]
    if keep is not None:
        keep = next((u for u in units if keep == u or u in keep.parents), None)
        if keep is not None:
            os.utime(keep, follow_symlinks=False)  # most recently used
    return storage.prune(units, cache_bytes(), keep=keep)


def download(url: str, progress: Progress | None = None, timeout: float = 15.0) -> Path:
    """Fetch a listed checkpoint URL into the cache (once), with progress, a free-space check and a
    size check; a partial file never masquerades as a finished one."""
    dest = _cache_dir() / Path(urlparse(url).path).name
    if dest.is_file():
        prune_cache(keep=dest)
        return dest
    host = urlparse(url).netloc
    if offline():
        raise ModelLoadError(f"offline mode (HF_HUB_OFFLINE=1): cannot download {dest.name} from {host}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            free = shutil.disk_usage(dest.parent).free
            if total and total + (256 << 20) > free:
                raise ModelLoadError(f"{dest.name} needs {total / 2**30:.2f} GB but only "
                                     f"{free / 2**30:.2f} GB are free in {dest.parent}")
            done, last = 0, 0.0
            with open(part, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if progress and time.monotonic() - last > 0.25:
                        last = time.monotonic()
                        frac = done / total if total else None
                        progress(frac, f"downloading {dest.name}: {done / 2**20:.0f} MB")
        if total and done != total:
            raise ModelLoadError(f"download of {dest.name} stopped at {done} of {total} bytes; try again")
        part.replace(dest)
        prune_cache(keep=dest)
    except ModelLoadError:
        part.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise ModelLoadError(f"could not download {dest.name} from {host} (no network?): {reason}") from None
    return dest


def _hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def _unreachable(host: str, port: int = 443, timeout: float = 3.0) -> str | None:
    """Why ``host`` cannot be reached, or None. huggingface_hub would retry for ~25 s before
    giving up; a user should hear at once that there is no network."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"no connection to {host} ({e.strerror or e})"


def _hub_cached(source: str) -> str | None:
    """A Hub model already in the local Hugging Face cache, as a local path (loads offline)."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = _hub_cache_dir()
    try:
        if source.endswith((".pth", ".pt")) and source.count("/") >= 2:
            owner, name, filename = source.split("/", 2)
            found = try_to_load_from_cache(f"{owner}/{name}", filename, cache_dir=cache_dir)
            return found if isinstance(found, str) else None
        found = try_to_load_from_cache(source, "config.json", cache_dir=cache_dir)
    except ValueError:  # huggingface_hub's HFValidationError: not a valid repo id ("a--b", "a..b")
        return None
    if isinstance(found, str) and (Path(found).parent / "model.safetensors").is_file():
        return str(Path(found).parent)
    return None


def _model_bytes(model: TarFlow) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def max_loaded_bytes() -> int:
    """Memory for loaded models, all together: TARFLOW_MAX_MODEL_MB (default 4 GB)."""
    return int(float(os.environ.get("TARFLOW_MAX_MODEL_MB", "4096")) * 2**20)


class ModelCache:
    """Loaded models by key, least recently used evicted first (at most ``capacity`` models and
    ``max_loaded_bytes()`` of weights; the newest always stays); each model loads once even when
    several requests ask for it at the same time."""

    def __init__(self, capacity: int = MAX_LOADED):
        self.capacity = max(1, capacity)
        self._models: OrderedDict[tuple[str, str], TarFlow] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def get(self, key: str, progress: Progress | None = None, dtype: torch.dtype = torch.float32) -> TarFlow:
        entry = resolve(key)
        slot = (entry.source, str(dtype))
        with self._lock:
            if slot in self._models:
                self._models.move_to_end(slot)
                return self._models[slot]
            gate = self._loading.setdefault(slot, threading.Lock())
        try:
            with gate:
                with self._lock:
                    if slot in self._models:
                        return self._models[slot]
                if dtype == torch.float32:
                    model = self._load(entry, progress)
                else:
                    base = self.get(key, progress)
                    if sum(p.numel() for p in base.parameters()) > MAX_FLOAT64_PARAMS:
                        raise ModelLoadError("float64 is offered only for small models")
                    model = copy.deepcopy(base).to(dtype)
                self._keep(slot, model)
                return model
        finally:
            with self._lock:  # a failed key must not stay in the table (it is the caller's text)
                if self._loading.get(slot) is gate:
                    del self._loading[slot]

    def _keep(self, slot: tuple[str, str], model: TarFlow) -> None:
        with self._lock:
            self._models[slot] = model
            budget = max_loaded_bytes()
            while len(self._models) > 1 and (len(self._models) > self.capacity or
                                             sum(map(_model_bytes, self._models.values())) > budget):
                self._models.popitem(last=False)

    def loading(self) -> int:
        """Models being loaded right now (for tests and monitoring)."""
        with self._lock:
            return len(self._loading)

    def loaded(self, key: str) -> bool:
        try:
            entry = resolve(key)
        except ModelLoadError:
            return False
        with self._lock:
            return (entry.source, str(torch.float32)) in self._models

    @staticmethod
    def _load(entry: ModelEntry, progress: Progress | None) -> TarFlow:
        source, check = entry.source, None
        if source.startswith(("http://", "https://")):
            source = str(download(source, progress))
        elif entry.remote:
            source, check = _fetch(entry, progress)
        try:
            return load_model(source, device=pick_device(), check=check)
        except ModelLoadError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise ModelLoadError(f"could not load {entry.key}: {type(e).__name__}: {e}") from None


def _fetch(entry: ModelEntry, progress: Progress | None) -> tuple[str, Callable[[dict], None] | None]:
    """A Hub model as a local path, and the architecture check to apply before building it. On a
    public server everything goes through the size checks into the bounded cache."""
    limits = LISTED_LIMITS if entry in CATALOGUE else hub_limits()
    check = (lambda cfg: check_config(cfg, limits)) if public() else None
    cached = _hub_cached(entry.source)
    if cached:
        if public():
            prune_cache(keep=Path(cached))
        return cached, check
    problem = "offline mode (HF_HUB_OFFLINE=1)" if offline() else _unreachable(_hub_host())
    if problem:
        raise ModelLoadError(f"cannot fetch {entry.key} from the Hugging Face Hub: {problem}. "
                             "The bundled models work without a network.")
    if progress:
        progress(None, f"fetching {entry.key} from the Hugging Face Hub")
    if not public():
        return entry.source, None  # your own machine: huggingface_hub fetches it, as before
    path = fetch_checked(entry.source, limits, _hub_cache_dir())
    prune_cache(keep=path)
    return str(path), check


MODELS = ModelCache()
