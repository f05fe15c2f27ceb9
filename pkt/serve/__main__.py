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
from omegaconf import DictConfig, OmegaConf

from pkt import hydra_setup  # noqa: F401 (pkt's config resolvers)
from pkt.errors import PktError
from pkt.resources import CONF_DIR

SERVE_KEYS = ("host", "port", "identify", "n_search", "search_max_new_tokens", "params", "max_tokens",
              "method", "temperature", "repetition_penalty", "preload", "cache_size",
              "log_level")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


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
            if sub not in SERVE_KEYS:
                raise PktError(f"unknown key serve.{sub} (serve keys: {', '.join(SERVE_KEYS)})")
        elif key == "paths.output_dir" and "$" not in value:
            check_writable(__import__("pathlib").Path(value))
        elif top not in ("model", "paths", "seed", "hydra"):
            raise PktError(f"unknown key '{key}' for pkt.serve (keys: model, paths.*, seed, "
                           f"serve.*)")


def _int(node, key: str, lo: int, hi: int | None = None, null: bool = False) -> int | None:
    v = node.get(key)
    if v is None and null:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise PktError(f"serve.{key} must be an integer {rng}{' or null' if null else ''}, "
                       f"got {v!r}")
    return v


def _float(node, key: str, lo: float, hi: float, lo_open: bool = False) -> float:
    v = node.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    if ok:
        ok = (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        raise PktError(f"serve.{key} must be a number {'>' if lo_open else '>='} {lo:g} and "
                       f"<= {hi:g}, got {v!r}")
    return float(v)


def settings_from_cfg(cfg: DictConfig):
    """(Settings, host, port, log level) from the composed config; PktError on a bad value."""
    from pkt.serve.app import Settings
    from pkt.serve.personas import parse_shorthand, served_methods

    node = OmegaConf.to_container(cfg.serve, resolve=True)
    host = node.get("host")
    if not isinstance(host, str) or not host:
        raise PktError(f"serve.host must be a host name or address, got {host!r}")
    port = _int(node, "port", 0, 65535)
    if not isinstance(node.get("identify"), bool):
        raise PktError(f"serve.identify must be true or false, got {node.get('identify')!r}")
    method = node.get("method")
    if method not in served_methods():
        raise PktError(f"unknown serve.method '{method}' (choose from: "
                       f"{', '.join(served_methods())})")
    preload = node.get("preload") or []
    if isinstance(preload, str):
        preload = [preload]
    if not isinstance(preload, list):
        raise PktError(f"serve.preload must be a list of personalities, got {preload!r}")
    for p in preload:
        try:
            parse_shorthand(str(p), method, "serve.preload")
        except PktError as e:
            raise PktError(f"serve.preload: {e}") from None
    params = node.get("params") or {}
    if not isinstance(params, dict) or any(not isinstance(v, dict) for v in params.values()):
        raise PktError(f"serve.params must map a method to its parameters, e.g. "
                       f"{{neuron: {{strength: 1.5}}}}, got {params!r}")
    for name, values in params.items():
        if name not in served_methods():
            raise PktError(f"unknown method serve.params.{name} (choose from: "
                           f"{', '.join(served_methods())})")
        from pkt.methods import registry
        from pkt.params import check_params

        try:  # the same declarations as the runner's method.* values
            check_params(registry.method_class(name), values, "method", name, ("ctx", "name"))
        except PktError as e:
            raise PktError(f"serve.params.{name}: {e}") from None
    level = node.get("log_level")
    if level not in LOG_LEVELS:
        raise PktError(f"unknown serve.log_level '{level}' (choose from: {', '.join(LOG_LEVELS)})")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PktError(f"seed must be an integer, got {seed!r}")
    settings = Settings(
        identify=node["identify"], n_search=_int(node, "n_search", 1, null=True),
        search_max_new_tokens=_int(node, "search_max_new_tokens", 1, null=True),
        max_tokens=_int(node, "max_tokens", 1), method=method,
        temperature=_float(node, "temperature", 0.0, 2.0),
        repetition_penalty=_float(node, "repetition_penalty", 0.0, 10.0, lo_open=True),
        seed=seed, cache_size=_int(node, "cache_size", 1), preload=tuple(map(str, preload)),
        params=params,
        cache_dir=str(cfg.paths.cache_dir))
    return settings, host, port, level


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
