"""The limits of a public server, checked in-process: work per request, Hub downloads (with
fabricated Hub metadata, no network), bounded folders, one-line errors, bounded fitting and
memory. The same limits through a launched server: tests/test_app_hardening.py."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import huggingface_hub
import numpy as np
import pytest
import torch
from app_models import make_tiny_models
from helpers import images, make_model
from PIL import Image

from app import checks, inputs, limits, models, storage
from app.runs import RUNS, RunStore
from app.tabs import generate
from tarflow import TarFlow, sampling
from tarflow.hub import HubLimits, ModelLoadError, check_config, fetch_checked, parameter_count, split_hub_id

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    make_tiny_models(tmp_path / "models")
    monkeypatch.setenv("TARFLOW_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path / "models"


@pytest.fixture
def public(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "test/tarflow")
    for name in ("TARFLOW_MAX_WORK", "TARFLOW_TIME_LIMIT", "TARFLOW_HUB_OWNERS", "TARFLOW_ALLOW_LOCAL_PATHS"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------------------------- work


def test_job_cost_is_images_passes_tokens_parameters(public):
    model = make_model(num_classes=3)  # 8x8, patch 2: 16 tokens
    n = sum(p.numel() for p in model.parameters())
    job = limits.sampling_job(model, 5, "cpu")
    assert job.cost == 5 * 3 * 16 * n
    assert job.cap == limits.DEFAULT_WORK_CAP["cpu"] and job.limit == limits.DEFAULT_TIME_LIMIT["cpu"]
    assert job.max_images(64) == 64  # a tiny model is far under the cap
    assert limits.invert_job(model, True, 3, "cpu").cost == 1 * (3 + 3) * 2 * 16 * n  # 3 classes scored
    assert limits.interpolate_job(model, 8, "cuda").cost == 10 * 16 * n


def test_job_refuses_over_the_cap_and_says_what_fits(public, monkeypatch):
    model = make_model()
    per_image = 3 * 16 * sum(p.numel() for p in model.parameters())
    monkeypatch.setenv("TARFLOW_MAX_WORK", str(7.5 * per_image))
    assert limits.sampling_job(model, 7, "cpu").check().images == 7
    with pytest.raises(limits.WorkLimit, match="limited to 7 images with this model on this server's cpu"):
        limits.sampling_job(model, 8, "cpu").check()
    monkeypatch.setenv("TARFLOW_MAX_WORK", str(0.5 * per_image))
    with pytest.raises(limits.WorkLimit, match="too large for Generate"):
        limits.sampling_job(model, 1, "cpu").check()
    assert limits.cap_note(0, "cpu", 64) == "too large to sample on this server's cpu"
    assert limits.cap_note(64, "cpu", 64) is None


def test_own_machine_has_no_cap_or_time_limit(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("TARFLOW_MAX_WORK", raising=False)
    monkeypatch.delenv("TARFLOW_TIME_LIMIT", raising=False)
    job = limits.sampling_job(make_model(), 10**6, "cpu").check()
    assert job.cap is None and job.limit is None and not job.stopped
    monkeypatch.setenv("TARFLOW_TIME_LIMIT", "5")
    assert limits.sampling_job(make_model(), 1, "cpu").limit == 5


def test_deadline_and_cancel_stop_a_job_between_items(public, monkeypatch):
    monkeypatch.setenv("TARFLOW_TIME_LIMIT", "0.2")
    job = limits.sampling_job(make_model(), 1, "cpu").check()
    seen = []
    with pytest.raises(limits.WorkLimit, match="time limit of 0.2 s"):
        for k in limits.watch(range(100), job):
            seen.append(k)
            time.sleep(0.05)
    assert 3 <= len(seen) <= 6
    job = limits.sampling_job(make_model(), 1, "cpu").check()
    job.cancel()  # what a Stop button would call
    assert job.stopped and job.reason == "stopped on request"
    with pytest.raises(limits.WorkLimit, match="stopped on request"):
        list(limits.watch(range(3), job))


# ---------------------------------------------------------------------------------------------- Hub


@pytest.mark.parametrize("source, expected", [
    ("owner/repo", ("owner/repo", None)),
    ("owner/repo/model_2_768.pth", ("owner/repo", "model_2_768.pth")),
])
def test_hub_ids_are_parsed(source, expected):
    assert split_hub_id(source) == expected


@pytest.mark.parametrize("source", ["file:///etc/passwd", "mnist/../../etc", "owner/..", "a/b/c", "owner/repo/x.py",
                                    "x" * 300 + "/y", "/abs/path", "owner", "own er/repo"])
def test_other_text_is_not_a_hub_id(source):
    with pytest.raises(ModelLoadError, match="not a Hugging Face Hub model id"):
        split_hub_id(source)


@pytest.mark.parametrize("cfg", [
    dict(in_channels=1, img_size=8, patch_size=2, channels=32, num_blocks=2, layers_per_block=1, num_classes=3,
         head_dim=16),
    dict(in_channels=3, img_size=8, patch_size=4, channels=32, num_blocks=3, layers_per_block=2, nvp=False,
         expansion=2, head_dim=16),
])
def test_parameter_count_from_the_config_matches_the_built_model(cfg):
    model = TarFlow(**cfg)
    built = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert parameter_count(cfg) == built


# The 208-byte config.json that took a server from 369 MB to 4.5 GB before its weights failed.
WIDE_CONFIG = {"in_channels": 3, "img_size": 64, "patch_size": 2, "channels": 4096, "num_blocks": 32,
               "layers_per_block": 32, "nvp": True, "num_classes": 1000, "head_dim": 64}


def test_an_oversized_config_is_refused_without_building_anything():
    t = time.perf_counter()
    with pytest.raises(ModelLoadError, match="M parameters; this server loads at most 400 M"):
        check_config(WIDE_CONFIG, HubLimits(max_params=400_000_000))
    assert time.perf_counter() - t < 0.1
    for key, value in (("num_blocks", 10**6), ("channels", "wide"), ("patch_size", True), ("img_size", -8)):
        with pytest.raises(ModelLoadError, match=f"{key} must be a whole number"):
            check_config({**WIDE_CONFIG, key: value}, HubLimits())
    with pytest.raises(ModelLoadError, match="tokens"):
        check_config({**WIDE_CONFIG, "channels": 64, "img_size": 256, "patch_size": 1}, HubLimits())


class FakeHub:
    """The Hub's metadata and downloads, fabricated: ``files`` maps "repo/filename" to a local file
    (its size is what the metadata reports, unless ``sizes`` says otherwise)."""

    def __init__(self, monkeypatch, cache: Path):
        self.files: dict[str, Path] = {}
        self.sizes: dict[str, int] = {}
        self.downloads: list[str] = []
        self.cache = cache
        monkeypatch.setattr(huggingface_hub, "hf_hub_url", lambda repo, name: f"{repo}/{name}")
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", self.metadata)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.download)
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
        monkeypatch.setattr(models, "offline", lambda: False)
        monkeypatch.setattr(models, "_unreachable", lambda host: None)

    def metadata(self, url: str) -> SimpleNamespace:
        if url not in self.files:
            raise FileNotFoundError(f"404 for {url}")
        return SimpleNamespace(size=self.sizes.get(url, self.files[url].stat().st_size))

    def download(self, repo: str, name: str, cache_dir: str | None = None) -> str:
        self.downloads.append(f"{repo}/{name}")
        folder = Path(cache_dir or self.cache) / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(self.files[f"{repo}/{name}"].read_bytes())
        return str(folder / name)


def test_hub_file_sizes_are_checked_before_downloading(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, tmp_path / "hf")
    make_model().save_pretrained(tmp_path / "src")
    hub.files = {"someone/m/config.json": tmp_path / "src" / "config.json",
                 "someone/m/model.safetensors": tmp_path / "src" / "model.safetensors"}
    hub.sizes = {"someone/m/model.safetensors": 5 << 30}
    with pytest.raises(ModelLoadError, match="5120 MB; this server downloads at most 1500 MB"):
        fetch_checked("someone/m", HubLimits(max_file_bytes=1500 << 20), str(tmp_path / "cache"))
    assert hub.downloads == ["someone/m/config.json"]  # the weights were never fetched
    (tmp_path / "wide.json").write_text(json.dumps(WIDE_CONFIG))
    hub.files["someone/m/config.json"] = tmp_path / "wide.json"
    hub.downloads.clear()
    with pytest.raises(ModelLoadError, match="parameters"):
        fetch_checked("someone/m", HubLimits(), str(tmp_path / "cache"))
    assert hub.downloads == ["someone/m/config.json"]


def test_a_public_server_fetches_allowed_hub_models_checked_into_a_bounded_cache(tmp_path, monkeypatch, public):
    hub = FakeHub(monkeypatch, tmp_path / "hf")
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TARFLOW_CACHE_GB", str(1.5 * 13_000 / 2**30))  # room for one small model
    for k, name in enumerate(("a", "b")):
        make_model(seed=k).save_pretrained(tmp_path / name)
        for f in ("config.json", "model.safetensors"):
            hub.files[f"friend/{name}/{f}"] = tmp_path / name / f
    cache = models.ModelCache()
    with pytest.raises(ModelLoadError, match="offers only the listed models"):
        cache.get("friend/a")
    assert not hub.downloads
    monkeypatch.setenv("TARFLOW_HUB_OWNERS", "friend, other")
    model = cache.get("friend/a")
    x = images(model)
    torch.testing.assert_close(model(x)[0], make_model(seed=0)(x)[0])
    hub_dir = tmp_path / "cache" / "hub"
    assert [p.name for p in hub_dir.iterdir()] == ["models--friend--a"]
    time.sleep(0.01)
    cache.get("friend/b")
    assert [p.name for p in hub_dir.iterdir()] == ["models--friend--b"]  # a went: over TARFLOW_CACHE_GB
    with pytest.raises(ModelLoadError, match="offers only the listed models"):
        cache.get("stranger/a")
    assert cache.loading() == 0


def test_an_oversized_reference_checkpoint_is_refused_before_it_is_built(tmp_path, monkeypatch, public):
    monkeypatch.setenv("TARFLOW_ALLOW_LOCAL_PATHS", "1")
    monkeypatch.setenv("TARFLOW_HUB_MAX_PARAMS", "20000")
    big = make_model(channels=64, head_dim=16)  # ~100 k parameters
    torch.save(big.state_dict(), tmp_path / "toy_model_2_64_2_2_0.1.pth")
    built = []
    monkeypatch.setattr("tarflow.hub.TarFlow", lambda **cfg: built.append(cfg))
    hub = FakeHub(monkeypatch, tmp_path / "hf")
    hub.files["friend/r/toy_model_2_64_2_2_0.1.pth"] = tmp_path / "toy_model_2_64_2_2_0.1.pth"
    monkeypatch.setenv("TARFLOW_HUB_OWNERS", "any")
    with pytest.raises(ModelLoadError, match="this server loads at most 0 M"):
        models.ModelCache().get("friend/r/toy_model_2_64_2_2_0.1.pth")
    assert hub.downloads and not built


def test_your_own_machine_keeps_its_freedom(tiny, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("TARFLOW_HUB_OWNERS", raising=False)
    assert models.resolve("someone/some-model").remote
    assert models.resolve(str(tiny / "tiny-cond")).source == str(tiny / "tiny-cond")
    assert models.hub_owners() is None and models._hub_cache_dir() is None


def test_a_failed_model_leaves_the_loading_table(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cache = models.ModelCache()
    for key in (str(broken), "tiny-cond", str(broken)):
        try:
            cache.get(key)
        except ModelLoadError:
            pass
        assert cache.loading() == 0


def test_loaded_models_are_bounded_by_bytes(tiny, monkeypatch):
    one = models._model_bytes(models.ModelCache().get("tiny-cond"))
    monkeypatch.setenv("TARFLOW_MAX_MODEL_MB", str(1.5 * one / 2**20))
    cache = models.ModelCache(capacity=10)
    cache.get("tiny-cond")
    cache.get("tiny-rgb")
    assert not cache.loaded("tiny-cond") and cache.loaded("tiny-rgb")


# ---------------------------------------------------------------------------------------------- disk


def test_prune_removes_the_oldest_until_under_the_bounds(tmp_path):
    units = []
    for k in range(6):
        d = tmp_path / f"u{k}"
        d.mkdir()
        (d / "f").write_bytes(b"x" * 1000)
        os.utime(d, (time.time() - 100 + k, time.time() - 100 + k))
        units.append(d)
    removed = storage.prune(units, max_bytes=3500, keep=units[0])
    assert removed == units[1:4] and units[0].exists() and units[5].exists()
    assert storage.prune(units[4:], max_bytes=10**9, max_count=1) == [units[4]]
    assert storage.prune([units[5]], max_bytes=10**9, older_than=10) == [units[5]]


def test_scratch_folders_are_swept_by_bytes_count_and_age(tmp_path, monkeypatch):
    monkeypatch.setenv("TARFLOW_SCRATCH", str(tmp_path))
    monkeypatch.setenv("TARFLOW_SCRATCH_MB", str(5000 / 2**20))
    made = []
    for _ in range(8):
        folder = storage.new_folder("runs")
        (folder / "grid.png").write_bytes(b"x" * 1000)
        made.append(folder)
        time.sleep(0.01)
    assert sum(f.exists() for f in made) <= 6 and made[-1].exists()
    monkeypatch.setenv("TARFLOW_FILE_MAX_AGE", "0")
    last = storage.new_folder("drawings")
    assert [p for p in tmp_path.glob("*/*")] == [last]


def test_the_janitor_sweeps_by_age_and_size_and_spares_what_existed(tmp_path):
    old = tmp_path / "example" / "mnist-3.png"
    old.parent.mkdir()
    old.write_bytes(b"x")
    since = time.time() + 0.01
    time.sleep(0.05)
    new = [tmp_path / f"h{k}" / "image.png" for k in range(4)]
    for p in new:
        p.parent.mkdir()
        p.write_bytes(b"y" * 1000)
    spared = new[3]
    assert storage.sweep_folder(tmp_path, age=3600, max_bytes=10**9, since=since, spare=set()) == []
    time.sleep(0.05)
    removed = storage.sweep_folder(tmp_path, age=0.01, max_bytes=10**9, since=since, spare={str(spared)})
    assert sorted(removed) == sorted(new[:3]) and old.exists() and spared.exists()


def test_inline_images_are_checked_before_anything_is_written():
    with pytest.raises(gr.Error, match="not an image"):
        from app.components import check_image_bytes
        check_image_bytes(b"GIF89a" + b"\0" * 100)
    buf = io.BytesIO()
    Image.new("L", (5, 5)).save(buf, "PNG")
    assert check_image_bytes(buf.getvalue()) == "png"


def test_uploads_are_limited_to_eight_megabytes_by_default(monkeypatch):
    from app.ui import launch_kwargs

    monkeypatch.delenv("TARFLOW_MAX_UPLOAD_MB", raising=False)
    assert launch_kwargs()["max_file_size"] == 8 * 2**20 == limits.max_upload_bytes()


# ---------------------------------------------------------------------------------------------- memory


@pytest.mark.filterwarnings("ignore:These samples are measurably off")  # random tiny weights
def test_kept_runs_are_bounded_by_bytes(tiny):
    args = dict(model_key="tiny-cond", classes=["star"], num=4, guidance=0.0, kind="class", attn_temp=1.0,
                annealed=False, guide_what="ab", temperature=1.0, denoise=True, sigma=0.1)
    runs = [RUNS.get(list(generate.generate(**args, seed=k, progress=lambda *a, **k: None))[-1][7])
            for k in range(5)]
    assert runs[0].nbytes >= sum(f.nbytes for f in runs[0].frames) > 0
    store = RunStore(capacity=100, max_bytes=int(2.5 * runs[0].nbytes))
    ids = [store.put(run) for run in runs]
    assert len(store) == 2 and store.nbytes <= 2.5 * runs[0].nbytes
    store.get(ids[-1])
    with pytest.raises(gr.Error, match="no longer kept"):
        store.get(ids[0])
    one = RunStore(capacity=100, max_bytes=1)
    one.put(runs[0])
    assert len(one) == 1  # the newest run always stays


def test_denoising_works_in_bounded_chunks_with_the_same_result(monkeypatch):
    model = make_model(num_classes=3)
    x = images(model, n=7)
    y = torch.tensor([0, 1, 2, -1, 0, 1, 2])
    whole = sampling.denoise(model, x, y, 0.2)
    sizes = []
    log_prob = sampling.log_prob
    monkeypatch.setattr(sampling, "log_prob", lambda m, xs, ys=None: sizes.append(len(xs)) or log_prob(m, xs, ys))
    monkeypatch.setattr(sampling, "DENOISE_CHUNK", 3)
    torch.testing.assert_close(sampling.denoise(model, x, y, 0.2), whole, rtol=0, atol=1e-6)
    assert sizes == [3, 3, 1]


RETAIN = """
import sys; sys.path.insert(0, {root!r})
from app.runtime import configure, release_memory
configure()
import ctypes, psutil
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
rss = lambda: psutil.Process().memory_info().rss
base = rss()
blocks = [libc.malloc(64 * 1024) for _ in range(4000)]  # 256 MB in blocks below glibc's mmap threshold
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
for b in blocks[:-1]:
    libc.free(b)  # freed, but the last block pins the heap's top: glibc keeps the pages
kept = rss() - base
release_memory()
print(kept, rss() - base)
"""


def test_release_memory_hands_freed_heap_pages_back():
    out = subprocess.run([sys.executable, "-c", RETAIN.format(root=str(ROOT))], capture_output=True, text=True,
                         timeout=60)
    kept, after = map(int, out.stdout.split())
    assert kept > 200 * 2**20 and after < 40 * 2**20, (kept, after)


# ---------------------------------------------------------------------------------------------- images


def test_fitting_a_long_strip_is_bounded_by_the_model_size():
    arr = np.zeros((1, 40000), np.uint8)
    arr[0, :3] = arr[0, -3:] = 255
    t = time.perf_counter()
    fitted = inputs.fit(Image.fromarray(arr), 28, 1, "mnist")
    assert time.perf_counter() - t < 0.5
    assert fitted.array.shape == (28, 28, 1)
    assert ("reduced to 256×1" in [s[0] for s in fitted.steps])
    assert all(max(img.size) <= 256 for _, img in fitted.steps)


def test_a_large_upload_is_reduced_before_any_conversion(tmp_path):
    arr = np.zeros((2000, 3000), np.uint16)
    arr[500:1500, 1000:2000] = 30000  # 117 of 255
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out, notes = inputs.open_image(tmp_path / "deep.png", max_side=256)
    assert out.size == (256, 171) and out.mode == "L"
    assert any("reduced from 3000 x 2000 to 256 x 171" in n for n in notes)
    fitted = inputs.load_fitted(tmp_path / "deep.png", 28, 1, "mnist")
    assert fitted.array.shape == (28, 28, 1) and fitted.array.max() > 100


def test_drawings_are_bounded_in_every_form():
    huge = np.zeros((3000, 3000), np.uint8)
    with pytest.raises(inputs.BadImage, match="far larger than the canvas"):
        inputs.sketch_to_image({"composite": huge})
    big = np.full((2000, 1000, 4), 255, np.uint8)
    assert inputs.sketch_to_image({"composite": big}).size == (256, 512)
    buf = io.BytesIO()
    Image.new("L", (2000, 2000), 255).save(buf, "PNG")
    assert inputs.sketch_to_image({"composite": buf.getvalue()}).size == (512, 512)
    with pytest.raises(inputs.BadImage, match="the drawing is not an image"):
        inputs.sketch_to_image({"composite": b"nothing"})


# ---------------------------------------------------------------------------------------------- errors


def test_guard_turns_errors_into_one_logged_line(caplog):
    def refuse(text: str) -> str:
        raise gr.Error(f"Unknown class {text!r}\nsecond line")

    def crash(text: str) -> str:
        return int(text)

    def stream(text: str):
        yield 1
        raise ValueError("x" * 5000)

    caplog.set_level(logging.INFO, logger="tarflow.app")
    long = "7" * 100_000
    for fn, pattern in ((refuse, "Unknown class '777"), (crash, "Something went wrong: ValueError")):
        with pytest.raises(gr.Error) as err:
            limits.guard(fn, "/x")(long)
        assert err.value.message.startswith(pattern) and "\n" not in err.value.message
        assert len(err.value.message) <= limits.MAX_MESSAGE + 40 and not err.value.print_exception
    wrapped = limits.guard(stream, "/s")
    import inspect

    assert inspect.isgeneratorfunction(wrapped)
    gen = wrapped(long)
    assert next(gen) == 1
    with pytest.raises(gr.Error, match="Something went wrong: ValueError: xxx"):
        next(gen)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all(len(line) < 800 and "\n" not in line for line in lines)


def test_odd_class_names_are_unknown_classes(tiny):
    model = models.MODELS.get("tiny-cond")
    assert checks.class_labels(model, [" 2 ", "-1", "square"], 3) == [2, -1, 1]
    for name in ("²", "١", "--3", "7" * 1_000_000):
        t = time.perf_counter()
        with pytest.raises(gr.Error, match="Unknown class") as err:
            checks.class_labels(model, [name], 3)
        assert len(err.value.message) < 200 and time.perf_counter() - t < 0.1


def test_every_event_runs_in_a_concurrency_group():
    """Every backend event is either queued in a group with a limit, or an instant private UI
    toggle kept off the queue (they return constants)."""
    from app.ui import build_demo

    demo = build_demo()
    groups, instant = {}, set()
    for fn in demo.fns.values():
        if fn.fn is None:
            continue
        name = fn.api_name or fn.name
        if not fn.queue:
            assert fn.api_visibility == "private", name
            instant.add(name)
            continue
        groups[name] = (fn.concurrency_id, fn.concurrency_limit)
    assert all(n in ("back_to", "_fresh_page") or n.startswith("lambda") for n in instant), instant
    compute = {groups[n] for n in ("generate", "inspect", "inspect_1", "invert", "_invert_if_image", "interpolate",
                                   "compare", "animation")}
    assert len(compute) == 1 and next(iter(compute))[0] == "compute"
    assert {groups[n][0] for n in ("pick_from_grid", "drawing_to_file", "_send", "frame")} == {"light"}
    assert groups["model_info"][0] == groups["picked"][0] == "models" and groups["play"][0] == "player"
    assert all(limit and limit <= 4 for _, limit in groups.values())
