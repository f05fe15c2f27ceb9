"""Drive a headless Chromium over the Chrome DevTools protocol (for the chat page's test
and its screenshot script): no browser download, no webdriver, only the system's
``chromium`` and a websocket (``websocket-client``).

    with Chromium() as b:
        b.open("http://127.0.0.1:8000/")
        b.wait("document.body.dataset.ready === '1'")
        b.click("#send")
        b.screenshot("chat.png")
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium with one page, driven by CDP commands over its websocket."""

    def __init__(self, width: int = 1280, height: int = 800, binary: str | None = None,
                 timeout: float = 30.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("chromium not found (make browser installs it)")
        self.width, self.height, self.timeout = width, height, timeout
        self.ids = itertools.count(1)

    def __enter__(self):
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="pkt-chromium-")
        self.proc = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--hide-scrollbars", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = self._port()
            page = self._page(port)
            self.ws = websocket.create_connection(page, timeout=self.timeout,
                                                  suppress_origin=True)
            self.cmd("Page.enable")
            self.cmd("Runtime.enable")
            self.cmd("Emulation.setDeviceMetricsOverride", width=self.width,
                     height=self.height, deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _port(self) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        t0 = time.time()
        while time.time() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with status {self.proc.returncode}")
            if marker.is_file():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            time.sleep(0.05)
        raise BrowserError("chromium did not open its DevTools port")

    def _page(self, port: int) -> str:
        t0 = time.time()
        while time.time() - t0 < self.timeout:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                for target in json.load(r):
                    if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                        return target["webSocketDebuggerUrl"]
            time.sleep(0.05)
        raise BrowserError("chromium has no page target")

    # -- CDP -------------------------------------------------------------------------------
    def cmd(self, method: str, **params):
        """Send one command and return its result (events in between are dropped)."""
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})

    def eval(self, expression: str):
        r = self.cmd("Runtime.evaluate", expression=expression, returnByValue=True,
                     awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"javascript error: {r['exceptionDetails'].get('text')} in "
                               f"{expression[:80]}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float | None = None, every: float = 0.1):
        """Poll ``expression`` until it is truthy; returns its value."""
        t0 = time.time()
        limit = self.timeout if timeout is None else timeout
        while True:
            v = self.eval(expression)
            if v:
                return v
            if time.time() - t0 > limit:
                raise BrowserError(f"timed out waiting for: {expression}")
            time.sleep(every)

    def open(self, url: str) -> None:
        self.cmd("Page.navigate", url=url)

    def box(self, selector: str) -> dict:
        r = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                      f".getBoundingClientRect(); return {{x: r.x, y: r.y, w: r.width, "
                      f"h: r.height}}; }})()")
        if not r:
            raise BrowserError(f"no element {selector}")
        return r

    def click_at(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.cmd("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                     clickCount=1)

    def click(self, selector: str, fx: float = 0.5, fy: float = 0.5) -> None:
        """A real mouse click at a fraction (``fx``, ``fy``) of the element's box."""
        b = self.box(selector)
        self.click_at(b["x"] + fx * b["w"], b["y"] + fy * b["h"])

    def type(self, selector: str, text: str) -> None:
        self.click(selector)
        self.cmd("Input.insertText", text=text)

    def screenshot(self, path: str | os.PathLike) -> Path:
        data = self.cmd("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
