"""``python -m pkt.serve``: an OpenAI-compatible HTTP API and a chat page over one model,
whose personality is chosen per request (NPTI neuron edits, ActAdd, or prompting).

    from pkt.serve import Settings, create_app
    app = create_app(pkt.load_model("tiny_random"), Settings(n_search=4))

Modules: :mod:`pkt.serve.app` (the HTTP routes, SSE), :mod:`pkt.serve.schema` (the request
body as a pydantic model, its errors as OpenAI's), :mod:`pkt.serve.settings` (the ``serve``
block as a pydantic model), :mod:`pkt.serve.service` (the model, the personality cache and its builds, the
counters), :mod:`pkt.serve.batcher` (the decoding batch, a personality per row),
:mod:`pkt.serve.rowcache` (its KV cache), :mod:`pkt.serve.lock` (the arrival-order lock of builds),
:mod:`pkt.serve.progress` (identification's progress while requests wait),
:mod:`pkt.serve.engine` (sampling settings, stop strings, the completion),
:mod:`pkt.serve.personas` (the ``personality`` field, the model-name shorthand, the
Personality cache), :mod:`pkt.serve.page` (the chat page), :mod:`pkt.serve.__main__` (the
Hydra entry point).
"""

from pkt.serve.app import create_app
from pkt.serve.settings import Settings

__all__ = ["Settings", "create_app"]
