"""Hostile requests against a public server, and what they cost it.

    python benchmarks/abuse.py [--mixed 50] [--burst 30] [--max-seconds 900] [--url URL]

Launches ``python app.py`` with SPACE_ID set (a public Space's settings) on the bundled models,
offline, its files in a temporary folder (or uses ``--url``: then RSS is not measured). Then:

1. a normal generation (16 MNIST images), for latency before;
2. the hostile requests from issue 16, one at a time: a 1 x 40000 strip on every image path,
   oversized drawings and drawing pieces, typed-in models (Hub ids, URLs, paths, a 300-character
   name), odd classes, inline data URLs, a burst of concurrent 64-image generations;
3. ``--mixed`` requests over every tab at the largest allowed sizes (64 images of each bundled
   model, inspect, the animation, a 8 x 6 comparison, float64 invert, 16-point interpolation, a
   drawing, a model switch);
4. the normal generation again.

Prints per request: the answer (shortened), seconds, and the server's resident memory before,
at its peak and after. Bounded: each request has a timeout, and the script stops starting new
ones after ``--max-seconds``. Not a test: it prints numbers and exits 0 unless the server dies.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # run as a script

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from raw_client import PeakRSS, component_id, file_data, fn_index, post_blob, queue_call, upload  # noqa: E402

MB = 2**20
EXAMPLES = ROOT / "assets" / "examples"


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99)) + chunk(b"IEND", b"")


def strip() -> bytes:
    arr = np.zeros((1, 40000), np.uint8)
    arr[0, :3] = arr[0, -3:] = 255
    return png(Image.fromarray(arr))


def sketch(side: int) -> bytes:
    img = Image.new("L", (side, side), 255)
    ImageDraw.Draw(img).line((side // 2, side // 6, side // 2, 5 * side // 6), fill=0, width=max(3, side // 15))
    return png(img)


def short(value: Any, limit: int = 78) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Bench:
    def __init__(self, url: str, pid: int | None, deadline: float):
        from gradio_client import Client

        self.url, self.pid, self.deadline = url, pid, deadline
        self.client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        self.rows: list[tuple[str, str, float, float, float, float]] = []

    def run(self, name: str, call: Callable[[], Any]) -> Any:
        if time.monotonic() > self.deadline:
            return None
        mem = PeakRSS(self.pid) if self.pid else None
        t = time.perf_counter()
        if mem:
            mem.__enter__()
        try:
            out = call()
            answer = short(out)
        except Exception as e:  # the answer to a hostile request is usually an error: print it
            out, answer = e, "error: " + short(str(e))
        finally:
            if mem:
                mem.__exit__(None, None, None)
        took = time.perf_counter() - t
        row = (name, answer, took, *((mem.before / MB, mem.peak / MB, mem.after / MB) if mem else (0, 0, 0)))
        self.rows.append(row)
        print(f"  {name:<38} {took:7.2f} s  RSS {row[3]:6.0f} -> peak {row[4]:6.0f} -> {row[5]:6.0f} MB  {answer}",
              flush=True)
        return out

    def generate(self, model: str, num: int, classes: list[str] | None = None, seed: int = 0, **over: Any) -> Any:
        args = dict(model_key=model, classes=classes or [], num=num, seed=seed, guidance=3.0, kind="class",
                    attn_temp=1.0, annealed=False, guide_what="ab", temperature=0.9, denoise=True, sigma=0.1,
                    slow=False, rows_by_class=True)
        args.update(over)
        return self.client.predict(*args.values(), api_name="/generate")

    def invert(self, model: str, path: Any, precision: str = "float32") -> Any:
        from gradio_client import handle_file

        source = handle_file(str(path)) if isinstance(path, (str, Path)) else path
        return self.client.predict(model, source, "auto", precision, True, api_name="/invert")

    def data_url(self, raw: bytes) -> str:
        url = "data:image/png;base64," + base64.b64encode(raw).decode()
        body = json.dumps({"data": ["mnist", {"path": None, "url": url, "meta": {"_type": "gradio.FileData"}},
                                    "auto", "float32", True]}).encode()
        req = urllib.request.Request(f"{self.url}gradio_api/call/invert", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            event = json.loads(r.read())["event_id"]
        with urllib.request.urlopen(f"{self.url}gradio_api/call/invert/{event}", timeout=120) as r:
            text = r.read().decode()
        return "refused: " + text.split('"error": ', 1)[1][:80] if "event: error" in text else "answered"


def hostile(b: Bench, tmp: Path) -> None:
    from gradio_client import handle_file

    url = b.url
    strip_path = tmp / "strip.png"
    strip_path.write_bytes(strip())
    b.run("strip 1x40000 -> /invert", lambda: b.invert("mnist", strip_path)[4])
    b.run("strip 1x40000 -> /interpolate (A, B)", lambda: b.client.predict(
        "mnist", handle_file(str(strip_path)), handle_file(str(strip_path)), 16, "slerp", "none",
        api_name="/interpolate")[1])
    _, path = upload(url, strip_path.read_bytes(), "strip.png")
    b.run("strip 1x40000 -> invert on upload", lambda: queue_call(
        url, fn_index(url, "_invert_if_image"), ["mnist", file_data(path), "auto", "float32", True]))
    drawing = fn_index(url, "drawing_to_file")
    editor = {"background": None, "layers": [], "composite": None, "id": None}
    for name, data in (("sketch 13000x13000", header_only_png(13000, 13000)), ("sketch 2000x2000", sketch(2000))):
        _, path = upload(url, data, "drawing.png")
        b.run(f"{name} -> drawing handler", lambda p=path: queue_call(url, drawing, [{**editor,
                                                                                     "composite": file_data(p)}]))
    canvas = component_id(url, "tf-sketch")
    b.run("canvas piece, layer index 10^9", lambda: post_blob(url, canvas, "layer", b"x", "abc", str(10**9)))
    b.run("20 unused canvas pieces of 4 MB", lambda: [post_blob(url, canvas, "composite", b"\0" * (4 * MB), f"u{k}")
                                                      for k in range(20)][-1])
    for key in ("someone/wide-blocks", "someone/huge/model.pth", "https://example.com/x.pth", "file:///etc/passwd",
                "mnist/../../etc", "checkpoints/mnist", "/etc/passwd", "/etc/no-such-file", "x" * 300):
        b.run(f"model {short(key, 24)}", lambda k=key: b.client.predict(k, api_name="/model_info")[0])
    b.run('class "²"', lambda: b.generate("mnist", 4, ["²"])[1])
    b.run("class: 1 MB of digits", lambda: b.generate("mnist", 4, ["7" * MB])[1])
    b.run("guidance kind: 100 kB string", lambda: b.generate("mnist", 4, kind="k" * 100_000)[1])
    b.run("data URL: 7 MB, not an image", lambda: b.data_url(b"\0" * (7 * MB)))
    b.run("data URL: 9 MB", lambda: b.data_url(b"\0" * (9 * MB)))
    noise = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)))
    b.run("data URL: 20 images of 1 MB", lambda: [b.data_url(noise) for _ in range(20)][-1])
    b.run("emoji, 65 images", lambda: b.generate("emoji", 65, ["0"])[1])

    def burst() -> str:
        def one(k: int) -> str:
            try:
                return b.generate("emoji", 64, ["0"], seed=k)[1][:8]
            except Exception as e:
                return short(str(e), 30)
        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(one, range(30)))
        return ", ".join(f"{answers.count(a)} x {a}" for a in sorted(set(answers)))
    b.run("burst: 30 x emoji 64 images at once", burst)


def mixed(b: Bench, count: int, tmp: Path) -> None:
    from gradio_client import handle_file

    drawing_path = tmp / "drawing.png"
    drawing_path.write_bytes(sketch(336))
    run_ids: dict[str, str] = {}
    steps: list[tuple[str, Callable[[], Any]]] = []
    for model, example in (("emoji", "emoji-smileys-emotion.png"), ("mnist", "mnist-3.png"),
                           ("fashion-mnist", "fashion-sneaker.png")):
        ex = EXAMPLES / example
        steps += [
            (f"{model}: 64 images", lambda m=model: run_ids.__setitem__(m, b.generate(m, 64, ["0"])[7]) or "done"),
            (f"{model}: inspect", lambda m=model: b.client.predict(run_ids.get(m, ""), 64, api_name="/inspect")[3]),
            (f"{model}: animation (GIF)", lambda m=model: b.client.predict(run_ids.get(m, ""), api_name="/animation")),
            (f"{model}: compare 8 x 6", lambda m=model: b.client.predict(
                m, [], 8, 0, 3.0, "class", 1.0, False, "ab", 0.9, True, 0.1, "guidance", "0, 1, 2, 3, 4, 6",
                api_name="/compare")[1]),
            (f"{model}: invert float64", lambda m=model, e=ex: b.invert(m, e, "float64")[4]),
            (f"{model}: interpolate 16", lambda m=model, e=ex: b.client.predict(
                m, handle_file(str(e)), handle_file(str(EXAMPLES / "mnist-7.png")), 16, "slerp", "none",
                api_name="/interpolate")[1]),
            (f"{model}: model switch", lambda m=model: b.client.predict(m, api_name="/model_info")[0]),
        ]
    def draw() -> Any:
        path = upload(b.url, drawing_path.read_bytes())[1]
        editor = {"background": None, "layers": [], "id": None, "composite": file_data(path)}
        return queue_call(b.url, fn_index(b.url, "drawing_to_file"), [editor])

    steps.append(("drawing", draw))
    first = len(b.rows)
    for k in range(count):
        name, call = steps[k % len(steps)]
        b.run(f"mixed {k + 1:2d}: {name}", call)
    done = b.rows[first:]
    if done:
        worst = max(done, key=lambda r: r[4])
        print(f"  {len(done)} requests in {sum(r[2] for r in done):.0f} s; RSS {done[0][3]:.0f} MB before, "
              f"peak {max(r[4] for r in done):.0f} MB (during '{worst[0]}'), {done[-1][5]:.0f} MB after")
        failed = [r for r in done if r[1].startswith("error")]
        print(f"  errors: {len(failed)}" + "".join(f"\n    {r[0]}: {r[1]}" for r in failed[:5]))


def normal(b: Bench, label: str) -> float | None:
    """Seconds for 16 guided MNIST images (None when past --max-seconds)."""
    rows = len(b.rows)
    b.run(f"normal: mnist 16 images ({label})", lambda: b.generate("mnist", 16, ["3", "7"], guidance=2.0)[1])
    return b.rows[-1][2] if len(b.rows) > rows else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixed", type=int, default=50, help="mixed requests over every tab")
    parser.add_argument("--max-seconds", type=float, default=900, help="start no request after this")
    parser.add_argument("--url", help="an already running server (RSS is then not measured)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tarflow-abuse-"))
    server = None
    if args.url:
        url, pid = args.url.rstrip("/") + "/", None
    else:
        from app_process import start_app

        server = start_app({"SPACE_ID": "benchmark/tarflow", "GRADIO_TEMP_DIR": str(tmp / "gradio"),
                            "TARFLOW_SCRATCH": str(tmp / "scratch"), "TARFLOW_CACHE": str(tmp / "cache")})
        url, pid = server.url, server.process.pid
    import psutil

    print(f"server {url} (SPACE_ID set, bundled models); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, machine memory {psutil.virtual_memory().total / 2**30:.0f} GB")
    b = Bench(url, pid, time.monotonic() + args.max_seconds)
    try:
        print("\n1. normal use")
        b.run("model switch: mnist", lambda: b.client.predict("mnist", api_name="/model_info")[0])
        before = normal(b, "before")
        print("\n2. hostile requests")
        hostile(b, tmp)
        print(f"\n3. {args.mixed} mixed requests, every tab, largest allowed sizes")
        mixed(b, args.mixed, tmp)
        print("\n4. normal use again")
        after = normal(b, "after")
        if before and after:
            print(f"  latency after / before: {after / before:.2f}")
        if server is not None:
            files = sum(1 for p in tmp.rglob("*") if p.is_file())
            size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
            print(f"  files the server holds now: {files} ({size / MB:.1f} MB) under {tmp}")
            print(f"  server alive: {server.alive()}; log {server.log.stat().st_size / 1024:.0f} kB, "
                  f"{len(server.log.read_text(errors='replace').splitlines())} lines")
    finally:
        if server is not None:
            alive = server.alive()
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)
            if not alive:
                print("THE SERVER DIED:\n" + "\n".join(server.log.read_text(errors="replace").splitlines()[-40:]))
                sys.exit(1)


if __name__ == "__main__":
    main()
