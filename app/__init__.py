"""The TarFlow web app: layout (``app.ui``), request handlers (``app.handlers``), model registry
(``app.models``), input images (``app.inputs``) and rendering (``app.render``).

All model math lives in the ``tarflow`` package; this package only calls it and draws the results.
"""
