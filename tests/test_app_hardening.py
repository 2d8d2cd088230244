"""A public server (SPACE_ID set) against hostile requests, through gradio_client and, for the
page's private helpers, the raw queue protocol: bounded work and memory per request, no
arbitrary downloads, files that are cleaned up, one-line errors. Memory is read from the server
process. (Unit-level checks of the same limits: tests/test_limits.py.)"""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from app_models import make_tiny_models
from app_server import ROOT, start_app
from PIL import Image, ImageDraw

sys.path.insert(0, str(ROOT / "benchmarks"))  # the raw protocol client that benchmarks/abuse.py uses
from raw_client import PeakRSS, component_id, file_data, fn_index, post_blob, queue_call, upload  # noqa: E402

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

MB = 2**20
# tiny-cond costs 3 passes x 16 tokens x 27472 parameters = 1.32e6 per image: a cap of 10 images.
WORK_CAP = 3 * 16 * 27472 * 10
UPLOAD_MB = 1


def gen_args(**over) -> list:
    args = dict(model_key="tiny-cond", classes=["star"], num=4, seed=0, guidance=1.0, kind="class", attn_temp=1.0,
                annealed=False, guide_what="ab", temperature=1.0, denoise=True, sigma=0.1, slow=False,
                rows_by_class=True, decode="sequential")
    args.update(over)
    return list(args.values())


@pytest.fixture(scope="module")
def dirs():
    root = Path(tempfile.mkdtemp(prefix="tarflow-hardened-"))
    make_tiny_models(root / "models")
    yield {name: root / name for name in ("models", "gradio", "scratch", "cache")}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(dirs):
    s = start_app({
        "SPACE_ID": "test/tarflow", "TARFLOW_MODELS_DIR": str(dirs["models"]), "TARFLOW_FRAME_INTERVAL": "0",
        "TARFLOW_MAX_WORK": str(WORK_CAP), "GRADIO_TEMP_DIR": str(dirs["gradio"]),
        "TARFLOW_SCRATCH": str(dirs["scratch"]), "TARFLOW_SCRATCH_MB": "1", "TARFLOW_CACHE": str(dirs["cache"]),
        "TARFLOW_DELETE_CACHE": "1,6", "TARFLOW_RUNS_MB": "0.06", "TARFLOW_MAX_UPLOAD_MB": str(UPLOAD_MB),
    })
    yield s
    alive = s.alive()
    s.stop()
    assert alive, f"the server died:\n{s.log_tail()}"


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    c = Client(server.url, verbose=False, analytics_enabled=False,
               download_files=str(tmp_path_factory.mktemp("downloads")))
    c.predict(*gen_args(num=1), api_name="/generate")  # first use: model load, TorchScript compile
    return c


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def strip_png(tmp_path: Path) -> Path:
    """The 120-byte upload that once took 3.4 GB: 1 x 40000, black with white at both ends."""
    arr = np.zeros((1, 40000), np.uint8)
    arr[0, :3] = arr[0, -3:] = 255
    path = tmp_path / "strip.png"
    Image.fromarray(arr).save(path)
    assert path.stat().st_size < 400
    return path


def header_only_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------- 1. uploads


def test_a_long_strip_costs_little_on_every_image_path(client, server, tmp_path):
    strip = strip_png(tmp_path)
    calls = {
        "/invert": lambda: client.predict("tiny-cond", handle_file(str(strip)), "auto", "float32", True,
                                          api_name="/invert"),
        "/interpolate": lambda: client.predict("tiny-cond", handle_file(str(strip)), handle_file(str(strip)), 16,
                                               "slerp", "none", api_name="/interpolate"),
    }
    _, path = upload(server.url, strip.read_bytes(), "strip.png")
    calls["invert on upload"] = lambda: queue_call(server.url, fn_index(server.url, "_invert_if_image"),
                                                   ["tiny-cond", file_data(path), "auto", "float32", True])
    for name, call in calls.items():
        t = time.perf_counter()
        with PeakRSS(server.process.pid) as mem:
            out = call()
        took = time.perf_counter() - t
        assert mem.growth < 60 * MB, f"{name}: the server grew by {mem.growth / MB:.0f} MB"
        assert took < 10, f"{name} took {took:.1f} s"
        if name == "invert on upload":
            ok, out = out
            assert ok, out
        assert any("max |x − x̂|" in str(o) or "reproduce A and B" in str(o) for o in out), out


def test_drawings_are_bounded_whether_sent_as_files_or_canvas_pieces(client, server):
    drawing = fn_index(server.url, "drawing_to_file")
    big = Image.new("L", (2000, 2000), 255)  # 4 MP: the largest drawing accepted
    ImageDraw.Draw(big).line((1000, 300, 1000, 1700), fill=0, width=120)
    editor = {"background": None, "layers": [], "composite": None, "id": None}
    for name, data in (("2000 x 2000", png_bytes(big)), ("13000 x 13000", header_only_png(13000, 13000))):
        _, path = upload(server.url, data, "drawing.png")
        t = time.perf_counter()
        with PeakRSS(server.process.pid) as mem:
            ok, out = queue_call(server.url, drawing, [{**editor, "composite": file_data(path)}])
        assert time.perf_counter() - t < 10 and mem.growth < 60 * MB, (name, mem.growth / MB)
        if name.startswith("2000"):
            assert ok, out
            with Image.open(out[0]["path"]) as img:
                assert max(img.size) <= 512  # kept at most SKETCH_SIDE
        else:
            assert not ok and "megapixels" in out, out

    # The browser sends the canvas in pieces first. A layer "index" of 10^9 once meant a list of a
    # billion entries; pieces for drawings never used are kept only for the last few.
    canvas = component_id(server.url, "tf-sketch")
    with PeakRSS(server.process.pid) as mem:
        assert post_blob(server.url, canvas, "layer", b"x", "a" * 8, index=str(10**9)) == 200
        for k in range(40):
            assert post_blob(server.url, canvas, "composite", b"\0" * (UPLOAD_MB * MB - 1000), f"unused{k}") == 200
    assert mem.after - mem.before < 40 * MB, f"+{(mem.after - mem.before) / MB:.0f} MB kept"
    assert post_blob(server.url, canvas, "composite", b"\0" * (2 * UPLOAD_MB * MB), "huge") == 413
    assert post_blob(server.url, canvas, "composite", png_bytes(big), "mine") == 200
    ok, out = queue_call(server.url, drawing, [{**editor, "id": "mine"}])
    assert ok, out


# ---------------------------------------------------------------------------------------------- 2. models


@pytest.mark.parametrize("key, message", [
    ("someone/some-model", "offers only the listed models"),
    ("someone/some-model/weights.pth", "offers only the listed models"),
    ("file:///etc/passwd", "local paths are disabled"),
    ("mnist/../../etc", "is not a listed model or a Hugging Face Hub id"),
    ("x" * 300, "at most 200 characters"),
])
def test_public_server_fetches_only_listed_models(client, server, key, message):
    with pytest.raises(AppError) as err:
        client.predict(key, api_name="/model_info")
    text = str(err.value)
    assert message in text and "\n" not in text.strip() and len(text) < 400, text
    assert server.alive()


@pytest.mark.parametrize("exists, missing", [
    ("/etc/passwd", "/etc/no-such-file"),
    ("checkpoints/mnist", "checkpoints/no-such-model"),  # relative to the server's folder
    ("app", "no-such-folder"),
])
def test_local_paths_answer_the_same_whether_or_not_they_exist(client, exists, missing):
    assert (ROOT / exists).exists() or Path(exists).exists()
    answers = []
    for key in (exists, missing):
        with pytest.raises(AppError) as err:
            client.predict(key, api_name="/model_info")
        answers.append(str(err.value).replace(repr(key), "<key>"))  # a message may quote the text sent
    assert answers[0] == answers[1]


# ---------------------------------------------------------------------------------------------- 3. work


def test_work_cap_is_stated_and_enforced(client):
    card, *_, num, _, _, _, _ = client.predict("tiny-cond", api_name="/model_info")
    assert num["maximum"] == 10 and "at most 10 per request" in num["info"]
    assert "at most 10 per request" in card
    assert client.predict("tiny-rgb", api_name="/model_info")[7]["maximum"] == 31  # cheaper per image
    assert client.predict(*gen_args(num=10), api_name="/generate")[1].startswith("**Done**")
    with pytest.raises(AppError, match="Generate is limited to 10 images with this model"):
        client.predict(*gen_args(num=11), api_name="/generate")
    compare = gen_args(num=4)[:-3] + ["guidance", "0, 1, 2"]  # 3 columns of 4 images
    compare[2] = 4
    with pytest.raises(AppError, match="Compare is limited to 10 images with this model"):
        client.predict(*compare, api_name="/compare")
    compare[-1] = "0, 1"
    assert client.predict(*compare, api_name="/compare")[1].startswith("**Done**")


def test_requests_past_the_time_limit_stop_with_what_they_have(dirs):
    """A second server whose time limit (1 s) is shorter than a paced generation (about 10 s)."""
    s = start_app({"SPACE_ID": "test/tarflow", "TARFLOW_MODELS_DIR": str(dirs["models"]),
                   "TARFLOW_FRAME_INTERVAL": "1.0", "TARFLOW_TIME_LIMIT": "1"})
    try:
        c = Client(s.url, verbose=False, analytics_enabled=False, download_files=False)
        t = time.perf_counter()
        final = c.predict(*gen_args(num=2), api_name="/generate")
        took = time.perf_counter() - t
        status = final[1]
        assert status.startswith("**Stopped**") and "time limit of 1 s" in status, status
        assert "unfinished" in status and final[0] is not None  # the picture so far
        assert final[7] == ""  # no run to inspect
        assert took < 8, took
    finally:
        s.stop()


# ---------------------------------------------------------------------------------------------- 4. disk


def test_inline_images_are_checked_before_writing_and_swept(client, server, dirs):
    invert = "/invert"

    def send(raw: bytes) -> str:
        url = "data:image/png;base64," + base64.b64encode(raw).decode()
        body = json.dumps({"data": ["tiny-cond", {"path": None, "url": url, "meta": {"_type": "gradio.FileData"}},
                                    "auto", "float32", False]}).encode()
        req = urllib.request.Request(f"{server.url}gradio_api/call{invert}", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            event = json.loads(r.read())["event_id"]
        with urllib.request.urlopen(f"{server.url}gradio_api/call{invert}/{event}", timeout=60) as r:
            return r.read().decode()

    inline = dirs["scratch"] / "inline"

    def stored() -> list[Path]:
        return sorted(inline.glob("*/*")) if inline.is_dir() else []

    before = stored()
    assert "not an image" in send(b"\x00" * 500_000)
    assert f"under {UPLOAD_MB} MB" in send(b"\x00" * (UPLOAD_MB * MB + 10))
    assert stored() == before  # refused before anything was written
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (330, 330, 3), dtype=np.uint8))
    raw = png_bytes(noise)
    assert 300_000 < len(raw) < UPLOAD_MB * MB
    for _ in range(6):
        assert "event: complete" in send(raw)
    files = stored()
    assert 1 <= len(files) <= 1 + MB // len(raw), files  # TARFLOW_SCRATCH_MB=1 keeps about 3
    assert sum(f.stat().st_size for f in files) <= MB + len(raw)


def test_uploads_are_limited_to_what_the_models_need(server):
    assert upload(server.url, b"\0" * (UPLOAD_MB * MB + 1000))[0] == 413
    assert upload(server.url, png_bytes(Image.new("L", (64, 64))))[0] == 200


def test_files_written_for_responses_are_deleted(client, server, dirs):
    """Gradio's cleanup and the janitor (every 1 s, files older than 6 s here) leave only the
    files that existed at start (the examples)."""
    remote = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)
    final = remote.predict(*gen_args(num=2), api_name="/generate")
    served = [Path(final[k]["path"]) for k in (0, 3, 4)]  # samples, strip, heatmap
    assert all(p.is_file() and dirs["gradio"] in p.parents for p in served)
    runs = sorted((dirs["scratch"] / "runs").iterdir())
    assert runs and len(runs) <= 40
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.exists() for p in served):
        time.sleep(0.5)
    assert not [p for p in served if p.exists()]
    examples = [p for p in dirs["gradio"].rglob("mnist-3.png")]
    assert examples, "the examples Gradio copied at start stay"


# ---------------------------------------------------------------------------------------------- 5. memory


def test_kept_runs_are_bounded_by_bytes(client):
    # TARFLOW_RUNS_MB=0.06 here: 10 tiny images with their recorded frames take ~26 kB, so at most
    # two runs fit (24 would be kept by count) and older ones go.
    ids = [client.predict(*gen_args(num=10, seed=k), api_name="/generate")[7] for k in range(4)]
    assert client.predict(ids[-1], 1, api_name="/inspect")[3].startswith("**Image 1**")
    for run_id in ids[:2]:
        with pytest.raises(AppError, match="no longer kept"):
            client.predict(run_id, 1, api_name="/inspect")


def test_memory_stays_flat_over_many_mixed_requests(client, server, tmp_path):
    example = ROOT / "assets" / "examples" / "mnist-3.png"
    client.predict("tiny-cond", handle_file(str(example)), "auto", "float64", True, api_name="/invert")
    rss = PeakRSS(server.process.pid)
    with rss:
        for k in range(8):
            run_id = client.predict(*gen_args(num=10, seed=k), api_name="/generate")[7]
            client.predict(run_id, 3, api_name="/inspect")
            client.predict("tiny-cond", handle_file(str(example)), "auto", "float64", True, api_name="/invert")
            client.predict("tiny-cond", handle_file(str(example)), handle_file(str(example)), 16, "slerp", "none",
                           api_name="/interpolate")
    assert rss.after - rss.before < 40 * MB, f"+{(rss.after - rss.before) / MB:.0f} MB after 32 requests"


# ---------------------------------------------------------------------------------------------- 6. smaller


@pytest.mark.parametrize("classes, message", [
    (["²"], "Unknown class '²'"),
    (["7" * 1_000_000], "Unknown class '777"),
])
def test_odd_classes_get_one_short_line(client, classes, message):
    with pytest.raises(AppError) as err:
        client.predict(*gen_args(classes=classes), api_name="/generate")
    text = str(err.value)
    assert message in text and len(text) < 400 and "\n" not in text.strip(), text[:500]


def test_each_error_is_one_short_log_line(client, server):
    def log_lines() -> list[str]:
        return server.log.read_text(errors="replace").splitlines()

    before = len(log_lines())
    long = "9" * 100_000
    bad = [gen_args(classes=[long]), gen_args(kind=long), gen_args(model_key=long), gen_args(num=10**6)]
    for args in bad * 3:
        with pytest.raises(AppError):
            client.predict(*args, api_name="/generate")
    new = log_lines()[before:]
    assert len(new) == len(bad) * 3, new
    assert all(len(line) < 700 and "Traceback" not in line for line in new), [line[:200] for line in new]


def test_page_helpers_are_private_and_queued(server):
    """Every backend event but instant private UI toggles goes through the queue (and so its size
    limit and a concurrency group, checked in test_limits.py); only the documented endpoints are
    open to gradio_client."""
    with urllib.request.urlopen(f"{server.url}config", timeout=30) as r:
        deps = json.loads(r.read())["dependencies"]
    for dep in deps:
        if dep.get("backend_fn") and dep.get("queue") is False:
            assert dep.get("api_visibility") == "private", dep.get("api_name")
    api = Client(server.url, verbose=False, analytics_enabled=False).view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/model_info", "/generate", "/inspect", "/frame", "/animation",
                                           "/animation_mp4", "/compare",
                                           "/invert", "/interpolate", "/ood", "/bits", "/inpaint", "/repair",
                                           "/train", "/train_step", "/train_pause", "/train_stop", "/train_reset",
                                           "/train_digits"}
    assert not api["unnamed_endpoints"]
