"""Gradio inputs that hand the handlers untouched, bounded data.

``gr.Image`` opens uploads with Pillow before our handler runs, so a text file or a
decompression bomb fails inside Gradio with a message we do not control. ``SafeImage`` renders as
the ordinary Image component in the browser but passes the file path through, so that
``app.inputs`` checks every upload and explains what is wrong.

``SafeRadio`` refuses a value it does not offer in one short line.

``gr.Sketchpad`` decodes every layer of a drawing into arrays before our handler runs (a 13000 x
13000 "drawing" cost 1.8 GB) and keeps the browser's uploaded pieces in memory, without limit,
until an event uses them. ``SafeSketchpad`` keeps only the composite, only up to the upload size
limit and only for the few drawings in flight, and passes it on undecoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import shutil
import threading
import warnings
from typing import Any

import gradio as gr
import gradio.component_meta as _component_meta
from gradio.components.base import server
from gradio.components.image_editor import AcceptBlobs, EditorData, EditorDataBlobs
from gradio.data_classes import FileData
from PIL import Image, UnidentifiedImageError

from app import storage
from app.inputs import MAX_PIXELS
from app.limits import echo, max_upload_bytes

PENDING_DRAWINGS = 16  # drawings uploaded by browsers and not yet used by an event
MAX_DRAWING_BYTES = 2 << 20  # the 336 x 336 canvas exports a few hundred kB at most
_blob_lock = threading.Lock()  # module-level: Gradio may deep-copy components, and locks do not copy

# Defining a component subclass makes Gradio write a type stub (.pyi) next to this file, meant for
# authors of custom components. We publish nothing, so switch that off while the classes are created.
_write_stub = _component_meta.create_or_modify_pyi
_component_meta.create_or_modify_pyi = lambda *args, **kwargs: None


def check_image_bytes(raw: bytes) -> str:
    """The format of an encoded image (from its header, nothing decoded); gr.Error if it is not
    an image or has more pixels than we decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:
                fmt, (w, h) = img.format or "image", img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        raise gr.Error("The inline data is not an image Pillow can read.") from None
    if w * h > MAX_PIXELS:
        raise gr.Error(f"The inline image is {w} x {h}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels.")
    return fmt.lower()


def store_image_bytes(raw: bytes, kind: str, stem: str) -> str:
    """Check that the bytes are an image, and only then write them to a fresh scratch folder
    (swept with the app's other files); nothing is left behind if writing fails."""
    fmt = check_image_bytes(raw)
    folder = storage.new_folder(kind)
    path = folder / f"{stem}.{fmt}"
    try:
        path.write_bytes(raw)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise gr.Error("The server could not store the image; try again later.", print_exception=False) from None
    return str(path)


class SafeImage(gr.Image):
    # Gradio renders template components with their base class's front-end (an ordinary Image).
    is_template = True

    def preprocess(self, payload: FileData | None) -> str | None:  # type: ignore[override]
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if getattr(payload, "path", None) is None and url.startswith("data:"):
            return self._save_data_url(url)
        if payload.path is None:
            raise gr.Error("The image upload arrived without a file.")
        return str(payload.path)

    def _save_data_url(self, url: str) -> str:
        """Decode, check that it is an image, and only then write it to a scratch folder (swept
        with the app's other files); nothing is left behind if writing fails."""
        limit = max_upload_bytes()
        header, _, data = url.partition(",")
        if ";base64" not in header or len(data) > limit * 4 // 3 + 4:
            raise gr.Error(f"Images sent inline must be base64 data URLs under {limit / 2**20:.0f} MB.",
                           print_exception=False)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise gr.Error("The inline image is not valid base64.") from None
        return store_image_bytes(raw, "inline", "image")


class SafeSketchpad(gr.ImageEditor):
    """A drawing canvas (use as gr.Sketchpad: pass ``sources=()`` and a brush); the handler gets
    ``{"composite": bytes | path | None}``."""

    # The browser shows the ordinary image editor. (No __init__ here: Gradio reads the page's
    # settings from the signature of the class's own __init__.)
    is_template = True

    @server
    def accept_blobs(self, data: AcceptBlobs) -> None:
        """The browser uploads the canvas in pieces before the event; only the composite is used."""
        info, files = data.data, data.files
        blob_id = str(info.get("id") or "")[:64]
        if info.get("type") != "composite" or not files or not blob_id:
            return
        blob = files[0][1]
        if len(blob) > MAX_DRAWING_BYTES:
            return  # the event then reports "draw something first"
        with _blob_lock:
            self.blob_storage.pop(blob_id, None)
            self.blob_storage[blob_id] = blob  # dicts keep insertion order: the first is the oldest
            while len(self.blob_storage) > PENDING_DRAWINGS:
                del self.blob_storage[next(iter(self.blob_storage))]

    def preprocess(self, payload: EditorData | None) -> dict[str, Any] | None:  # type: ignore[override]
        if payload is None:
            return None
        if payload.id is not None:
            with _blob_lock:
                return {"composite": self.blob_storage.pop(str(payload.id)[:64], None)}
        composite = payload.composite
        return {"composite": str(composite.path) if composite is not None and composite.path else None}


class SafeRadio(gr.Radio):
    """A Radio whose refusal of a value it does not offer quotes that value briefly (Gradio's own
    message repeats all of it: 100 kB sent, 100 kB answered and logged)."""

    is_template = True

    def preprocess(self, payload: str | int | float | None) -> str | int | float | None:
        choices = [value for _, value in self.choices]
        if payload is not None and payload not in choices:
            raise gr.Error(f"{self.label or 'This choice'} must be one of {', '.join(map(repr, choices))}, "
                           f"got {echo(payload)}")  # printed by Gradio as one line: see app/limits.py
        return super().preprocess(payload)


class SafeEditor(gr.ImageEditor):
    """An ImageEditor whose handler gets file paths: background, layers and composite are checked
    as images here and decoded later by ``app.inputs`` with its size checks. The pieces a browser
    uploads before the event are bounded (size, layer index, drawings in flight): the stock editor
    grows a list to whatever layer index a caller names."""

    is_template = True
    MAX_LAYERS = 4

    @server
    def accept_blobs(self, data: AcceptBlobs) -> None:
        info, files = data.data, data.files
        blob_id, kind = str(info.get("id") or "")[:64], info.get("type")
        if not files or not blob_id or len(files[0][1]) > max_upload_bytes():
            return
        index = str(info.get("index") or "")
        layer = int(index) if index.isdecimal() and len(index) < 3 else None
        if kind not in ("background", "composite") and (kind != "layer" or layer is None
                                                        or layer >= self.MAX_LAYERS):
            return
        with _blob_lock:
            current = self.blob_storage.pop(blob_id, None) or EditorDataBlobs(background=None, layers=[],
                                                                              composite=None)
            if kind == "layer":
                current.layers.extend([None] * (layer + 1 - len(current.layers)))
                current.layers[layer] = files[0][1]
            else:
                setattr(current, kind, files[0][1])
            self.blob_storage[blob_id] = current
            while len(self.blob_storage) > PENDING_DRAWINGS:
                del self.blob_storage[next(iter(self.blob_storage))]

    def convert_and_format_image(self, file: FileData | None | bytes,  # type: ignore[override]
                                 flatten_on_white: bool = False) -> str | None:
        if file is None:
            return None
        if isinstance(file, (bytes, bytearray, memoryview)):
            return store_image_bytes(bytes(file), "editor", "layer")
        if file.path is None:
            raise gr.Error("The editor sent an image without a file.")
        return str(file.path)


_component_meta.create_or_modify_pyi = _write_stub
