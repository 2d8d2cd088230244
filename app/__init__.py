"""The TarFlow web app: layout (``app.ui``), one module of handlers per tab (``app.tabs``), the
model picker (``app.picker``), input checks (``app.checks``), generated runs (``app.runs``), captions
(``app.captions``), model registry (``app.models``), input images (``app.inputs``) and rendering
(``app.render``).

All model math lives in the ``tarflow`` package; this package only calls it and draws the results.
"""
