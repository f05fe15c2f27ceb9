"""Start ``python -m pkt.serve`` in a subprocess and wait until it listens (for scripts:
the benchmark, the screenshot). Port 0 by default: the server picks a free one and says
which in its ``pkt: serving ... on http://HOST:PORT`` line.

    with Launched(["model=tiny_random"], log="serve.log") as url:
        ...  # url = "http://127.0.0.1:PORT"
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pkt.resources import work_dir


class Launched:
    def __init__(self, overrides: list[str], log: str | os.PathLike | None = None,
                 env: dict | None = None, timeout: float = 3600.0, echo: bool = True):
        self.overrides, self.timeout, self.echo = list(overrides), timeout, echo
        self.log = Path(log) if log else None
        self.env = {**os.environ, **(env or {})}

    def __enter__(self) -> str:
        cmd = [sys.executable, "-m", "pkt.serve", "serve.port=0", *self.overrides]
        self.proc = subprocess.Popen(cmd, cwd=work_dir(), env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        ready: dict = {}
        got = threading.Event()
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        sink = open(self.log, "w") if self.log else None  # noqa: SIM115 (closed in the thread)

        def drain():
            try:
                for line in self.proc.stdout:
                    if sink:
                        sink.write(line)
                        sink.flush()
                    if self.echo and not got.is_set():
                        sys.stderr.write("  server: " + line)
                    if line.startswith("pkt: serving ") and not got.is_set():
                        ready["url"] = line.split(" on ", 1)[1].split()[0]
                        got.set()
                    if line.startswith("pkt: error:"):
                        ready["error"] = line.strip()
            finally:
                if sink:
                    sink.close()
                got.set()

        self.thread = threading.Thread(target=drain, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not got.wait(0.5):
            if time.time() - t0 > self.timeout:
                self.__exit__()
                raise RuntimeError("the server did not start in time")
        if "url" not in ready:
            self.__exit__()
            raise RuntimeError(ready.get("error") or
                               f"the server exited with status {self.proc.wait()}")
        return ready["url"]

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)
