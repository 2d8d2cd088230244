"""A Gradio image input that hands the handler the uploaded file untouched.

``gr.Image`` opens uploads with Pillow before our handler runs, so a text file or a
decompression bomb fails inside Gradio with a message we do not control. ``SafeImage`` renders as
the ordinary Image component in the browser but passes the file path through, so that
``app.inputs`` checks every upload and explains what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from pathlib import Path

import gradio as gr
import gradio.component_meta as _component_meta
from gradio.data_classes import FileData

MAX_DATA_URL_BYTES = 25 << 20

# Defining a component subclass makes Gradio write a type stub (.pyi) next to this file, meant for
# authors of custom components. We publish nothing, so switch that off while the class is created.
_write_stub = _component_meta.create_or_modify_pyi
_component_meta.create_or_modify_pyi = lambda *args, **kwargs: None


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
        header, _, data = url.partition(",")
        if ";base64" not in header or len(data) > MAX_DATA_URL_BYTES * 4 // 3:
            raise gr.Error("Images sent inline must be base64 data URLs under 25 MB.")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise gr.Error("The inline image is not valid base64.") from None
        folder = Path(self.GRADIO_CACHE) / "inline" / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "image"
        path.write_bytes(raw)
        return str(path)


_component_meta.create_or_modify_pyi = _write_stub
