"""One module per tab of the page, holding the functions that its events call.

A handler takes and returns plain values (strings, numbers, numpy images, file paths, ``gr.update``
dicts), so tests call it without a server. It checks its inputs with ``app.checks``, calls
``tarflow`` for all model math, draws with ``app.render`` and words with ``app.captions``. A new tab
gets a module here and a block in ``app/ui.py``.
"""
