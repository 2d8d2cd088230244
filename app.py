"""TarFlow web app: ``python app.py``, then open the printed address.

Honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (as Spaces and the tests use). This file only
builds and launches; the page is declared in ``app/ui.py``.
"""

from app.runtime import configure

configure()  # before gradio and torch are imported: analytics off, CPU and memory settings

from app.gpu import spaces  # noqa: E402,F401  (ZeroGPU wants `spaces` imported before torch)
from app.limits import configure_logging, quiet_gradio_tracebacks  # noqa: E402
from app.ui import build_demo, concurrency, launch_kwargs, queue_size, start_cleanup  # noqa: E402

configure_logging()  # one line per refused request, input truncated
quiet_gradio_tracebacks()

demo = build_demo()
demo.queue(default_concurrency_limit=concurrency(), max_size=queue_size())
start_cleanup(demo)

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
