"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no extra package).

Headless Chromium (Debian's ``chromium``) reads JSON commands on fd 3 and writes replies and
events on fd 4, each message ended by a NUL byte. :class:`Browser` opens a page, records every
network request the page issues (``Network.requestWillBeSent``) and every browser log entry
(``Log.entryAdded``: CSP violations, blocked loads), evaluates expressions (DevTools evaluation is
not subject to the page's CSP) and takes screenshots.
"""
from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio"]


def chromium_path() -> str | None:
    """The browser binary. Debian's ``/usr/bin/chromium`` is a shell launcher that does not keep
    fds 3/4 open, so its real binary ``/usr/lib/chromium/chromium`` is preferred."""
    real = "/usr/lib/chromium/chromium"
    if os.access(real, os.X_OK):
        return real
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    def __init__(self, profile: str, exe: str | None = None, timeout: float = 60.0):
        exe = exe or chromium_path()
        if not exe:
            raise RuntimeError("chromium not found")
        self.timeout = timeout
        import fcntl

        r_cmd, self._w = os.pipe()
        self._r, w_res = os.pipe()
        # move the child's ends above 9 so the redirections below never overwrite one another
        r_hi, w_hi = fcntl.fcntl(r_cmd, fcntl.F_DUPFD, 10), fcntl.fcntl(w_res, fcntl.F_DUPFD, 10)
        os.close(r_cmd)
        os.close(w_res)
        r_cmd, w_res = r_hi, w_hi
        # the browser wants the pipe on fds 3 (commands in) and 4 (replies out)
        script = f'exec "$@" 3<&{r_cmd} 4>&{w_res} {r_cmd}<&- {w_res}>&-'
        self.proc = subprocess.Popen(["bash", "-c", script, "bash", exe, *FLAGS, "--remote-debugging-pipe",
                                      f"--user-data-dir={profile}", "about:blank"],
                                     pass_fds=(r_cmd, w_res), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r_cmd)
        os.close(w_res)
        self._id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()
        self.session: str | None = None

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self._events.put(msg)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + self.timeout
        with self._cond:
            while self._id not in self._replies:
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"no reply to {method}")
                self._cond.wait(left)
            reply = self._replies.pop(self._id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, url: str, width: int = 1280, height: int = 1000) -> dict:
        """Open ``url`` in a new page; returns {requests: [urls], log: [entries], title}."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Network", "Log", "Runtime"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        self._drain()
        self.send("Page.navigate", {"url": url})
        requests, log, loaded = [], [], False
        deadline = time.time() + self.timeout
        quiet_until = None
        while time.time() < deadline:
            try:
                ev = self._events.get(timeout=0.1)
            except queue.Empty:
                if loaded and quiet_until and time.time() > quiet_until:
                    break
                continue
            if ev.get("sessionId") != self.session:
                continue
            m, p = ev["method"], ev.get("params", {})
            if m == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
            elif m == "Log.entryAdded":
                log.append(p["entry"])
            elif m == "Page.loadEventFired":
                loaded = True
            if loaded:
                quiet_until = time.time() + 0.5  # late loads (onerror handlers, lazy images)
        if not loaded:
            raise TimeoutError(f"{url} did not load")
        return {"requests": requests, "log": log, "title": self.eval("document.title")}

    def _drain(self) -> None:
        while True:
            try:
                self._events.get_nowait()
            except queue.Empty:
                return

    def eval(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return r["result"].get("value")

    def screenshot(self, path: str, y: float = 0, height: float | None = None, width: int = 1280) -> None:
        """PNG of the page from ``y`` (CSS px) down ``height`` px (default: to the end)."""
        total = self.eval("document.documentElement.scrollHeight")
        h = min(total - y, height) if height else total - y
        r = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                 "clip": {"x": 0, "y": y, "width": width, "height": h, "scale": 1}})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
