"""``python -m pkt.serve [overrides]``: serve a model with a personality per request.

Hydra-composed from ``conf/serve.yaml`` (groups ``model`` and ``paths``, the ``serve``
block), e.g. ``python -m pkt.serve model=tiny_random serve.port=0``. A bad value stops it
before the model loads with one line, ``pkt: error: ...``, like the runner. Once the
server listens it prints ``pkt: serving <model> on http://HOST:PORT`` (the real port when
``serve.port=0``).
"""
# ruff: noqa: E402

from __future__ import annotations

import socket
import sys

import hydra
from omegaconf import DictConfig

from pkt import hydra_setup  # noqa: F401 (pkt's config resolvers)
from pkt.errors import PktError
from pkt.resources import CONF_DIR


def serve_keys() -> tuple[str, ...]:
    from pkt.serve.settings import Settings

    return Settings.serve_keys()


def preflight(argv: list[str]) -> None:
    """Unknown keys and unknown model choices, in one line each, before Hydra composes."""
    from pkt.cli import check_words, check_writable, config_groups

    check_words(argv, "python -m pkt.serve", "serve.port=8080")
    models = config_groups()["model"]
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        top, _, sub = key.partition(".")
        if top == "model" and not sub:
            if value not in models:
                raise PktError(f"unknown model '{value}' (choose from: {', '.join(models)})")
        elif top == "serve":
            if sub not in serve_keys():
                raise PktError(f"unknown key serve.{sub} (serve keys: "
                               f"{', '.join(serve_keys())})")
        elif key == "paths.output_dir" and "$" not in value:
            check_writable(__import__("pathlib").Path(value))
        elif top not in ("model", "paths", "seed", "hydra"):
            raise PktError(f"unknown key '{key}' for pkt.serve (keys: model, paths.*, seed, "
                           f"serve.*)")


def settings_from_cfg(cfg: DictConfig):
    """(Settings, host, port, log level) from the composed config; PktError on a bad value
    (the checks are :class:`pkt.serve.settings.Settings`'s)."""
    from pkt.serve.settings import Settings

    s = Settings.from_cfg(cfg)
    return s, s.host, s.port, s.log_level


def check_port(host: str, port: int) -> None:
    """Fail early (before the model loads) if the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise PktError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, _, _, _, addr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
    except OSError as e:
        raise PktError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    finally:
        s.close()


def make_server(app, host: str, port: int, log_level: str = "info"):
    """A uvicorn server that prints one ``pkt: serving ...`` line once it listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                real = self.servers[0].sockets[0].getsockname()[1]
                name = app.state.service.lm.name
                print(f"pkt: serving {name} on http://{host}:{real} (chat page /, OpenAI "
                      f"API /v1)", flush=True)

    return Server(uvicorn.Config(app, host=host, port=port, log_config=None,
                                 log_level=log_level, timeout_graceful_shutdown=5))


def serve(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from pkt.serve.app import create_app

    settings, host, port, level = settings_from_cfg(cfg)
    check_port(host, port)
    lm = instantiate(cfg.model).load()
    app = create_app(lm, settings)
    app.state.service.preload(settings.preload)
    server = make_server(app, host, port, level)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn stops gracefully on Ctrl-C / SIGTERM, then raises the signal again
        if not server.started:
            raise


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    from pkt import cli as cmdline

    code = cmdline.guarded(lambda: serve(cfg))
    if code:
        raise SystemExit(code)


def cli() -> None:
    from pkt import cli as cmdline

    cmdline.preflight_or_exit(sys.argv[1:], preflight)
    main()


if __name__ == "__main__":
    cli()
