"""Headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``), standard library only.

The explorer tests open a page from disk in a real browser, collect every console error, uncaught exception,
failed load and network request, evaluate JavaScript in the page and take screenshots. Chromium comes from
Debian's ``chromium`` package (``.ci/run`` installs it when missing); ``FNET_CHROMIUM`` names another binary.

Usage as a script (the README's card screenshot)::

    python tests/browser.py screenshot PAGE.html "#card-all-9" docs/network_card.png [WIDTH]

(``WIDTH``: the window's width in pixels, default 1400; the README's was taken at 1000.)
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: the flags every run uses: headless, no sandbox (containers, root), nothing fetched in the background, and a
#: proxy that goes nowhere so that a request to the network fails rather than leaves the machine
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    """The Chromium binary: ``$FNET_CHROMIUM``, else ``chromium`` (Debian), ``chromium-browser`` or
    ``google-chrome`` on the PATH; None when there is none."""
    if os.environ.get("FNET_CHROMIUM"):
        return os.environ["FNET_CHROMIUM"]
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class BrowserError(RuntimeError):
    """The browser answered a command with an error, or did not answer in time."""


class Browser:
    """One headless Chromium process and one page (a DevTools session on a new target)."""

    def __init__(self, executable: str | None = None, *, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        executable = executable or find_chromium()
        if not executable:
            raise FileNotFoundError("no chromium: apt-get install -y chromium (or set FNET_CHROMIUM)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="fnet-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes answers on fd 4: move our ends of both pipes above 10
        # first, so that placing them on 3 and 4 in the child never overwrites the other one
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def place_pipes():
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        args = [executable, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=place_pipes,
        )
        os.close(child_r)
        os.close(child_w)
        self._write = os.fdopen(to_browser_w, "wb", buffering=0)
        self._read = os.fdopen(from_browser_r, "rb", buffering=0)
        self._next_id = 0
        self._answers: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.events: list[dict] = []
        self._stderr: list[bytes] = []
        threading.Thread(target=self._reader, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.process.stderr), daemon=True).start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    # -- protocol ---------------------------------------------------------------------------------------------
    def _reader(self) -> None:
        buffer = b""
        while True:
            chunk = self._read.read(1 << 16)
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message and message["id"] in self._answers:
                    self._answers[message["id"]].put(message)
                else:
                    self.events.append(message)

    def send(self, method: str, *, session: bool = False, **params: Any) -> dict:
        """Send one DevTools command (to the page's session with ``session=True``) and wait for its answer."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self._answers[ident] = queue.Queue()
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self._write.write(json.dumps(message).encode() + b"\0")
        try:
            answer = self._answers[ident].get(timeout=self.timeout)
        except queue.Empty:
            raise BrowserError(
                f"{method}: no answer in {self.timeout} s; chromium said: "
                f"{b''.join(self._stderr)[-2000:].decode(errors='replace')}"
            ) from None
        finally:
            self._answers.pop(ident, None)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def wait_for(self, method: str, since: int = 0) -> dict:
        """The first event ``method`` of the page at index ``since`` or later (waits for it)."""
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            for event in self.events[since:]:
                if event.get("method") == method:
                    return event
            time.sleep(0.05)
        raise BrowserError(f"no {method} event in {self.timeout} s")

    # -- page -------------------------------------------------------------------------------------------------
    def open(self, path: str | Path) -> None:
        """Load a file and wait for its load event and for the page's script to have run (``data-ready``)."""
        since = len(self.events)
        self.send("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired", since)
        deadline = time.time() + self.timeout
        while not self.evaluate("document.documentElement.getAttribute('data-ready') === '1'"):
            if time.time() > deadline:
                raise BrowserError("the page's script did not finish (no data-ready)")
            time.sleep(0.05)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values)."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Every console error, uncaught exception and error log entry (failed loads, CSP) so far."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(
                    f"exception: {params['exceptionDetails'].get('exception', {}).get('description') or params['exceptionDetails'].get('text')}"  # noqa: E501
                )
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        """The URL of every request the page made, but for ``data:`` URIs (its embedded images)."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent" and not e["params"]["request"]["url"].startswith("data:")
        ]

    def screenshot(self, path: str | Path, selector: str | None = None, *, padding: int = 8) -> Path:
        """A PNG of the viewport, or of the element ``selector`` (scrolled into view, ``padding`` px around it)."""
        params: dict[str, Any] = {"format": "png"}
        if selector:
            # the sticky filter bar would cover the top of the element: let it scroll away with the page
            rect = self.evaluate(
                f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                "document.querySelectorAll('.controls').forEach(c => c.style.position = 'static'); "
                "e.scrollIntoView(); const r = e.getBoundingClientRect(); "
                "return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; })()"
            )
            x, y, w, h = rect
            params.update(
                clip={
                    "x": max(0, x - padding),
                    "y": max(0, y - padding),
                    "width": w + 2 * padding,
                    "height": h + 2 * padding,
                    "scale": 1,
                },
                captureBeyondViewport=True,
            )
        data = self.send("Page.captureScreenshot", session=True, **params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (BrowserError, OSError, ValueError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for handle in (self._write, self._read):
            try:
                handle.close()
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5) or argv[0] != "screenshot":
        print(__doc__, file=sys.stderr)
        return 2
    _, page, selector, out = argv[:4]
    with Browser(width=int(argv[4]) if len(argv) == 5 else 1400) as browser:
        browser.open(page)
        browser.screenshot(out, selector)
        errors = browser.errors()
    print("\n".join(errors) or f"wrote {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
