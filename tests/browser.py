"""Load a local HTML file in Debian's headless Chromium and report what the browser saw.

:func:`render` starts ``/usr/bin/chromium`` headless (no sandbox, no GPU, no
network services, a fresh profile in a temporary folder) and drives it over
the DevTools protocol on a pipe (``--remote-debugging-pipe``: file
descriptors 3 and 4, JSON messages ended by NUL; no port, no extra library).
The page file is loaded as it is: nothing is added to it. While it loads,
the browser reports every script it compiles (``Debugger.scriptParsed``:
inline scripts and event-handler attributes included) and every request it
makes (``Network.requestWillBeSent``); after the load event, one expression
of ours reads the rendered DOM: the document's title and root attributes,
the section ids and headings, and each ``<img>`` after ``decode()`` (its
natural size, 0 when the browser could not decode it).

Chromium comes from the distribution's packages: ``make test`` installs it
(``apt-get install -y chromium`` as root). A test that needs it fails, never
skips, when it is missing (:func:`chromium`).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DIGITBATCH_CHROMIUM", "/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
         "--remote-debugging-pipe")
# A guard against a hung browser, not a timing: a page loads in about a second.
HANG_SECONDS = 120

_INSPECT = """(async () => {
  const imgs = Array.from(document.images);
  const seen = await Promise.all(imgs.map(async (img) => {
    let error = null;
    try { await img.decode(); } catch (e) { error = String(e); }
    return {alt: img.alt, src: img.getAttribute('src').slice(0, 40), complete: img.complete,
            naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, error};
  }));
  const attrs = (el) => Object.fromEntries(Array.from(el.attributes).map(a => [a.name, a.value]));
  return {
    title: document.title,
    htmlAttrs: attrs(document.documentElement), bodyAttrs: attrs(document.body),
    sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
    headings: Array.from(document.querySelectorAll('h1,h2,h3')).map(h => h.textContent),
    text: document.body.innerText,
    nScripts: document.scripts.length,
    nElementsWithHandlers: Array.from(document.querySelectorAll('*')).filter(
        el => Array.from(el.attributes).some(a => a.name.startsWith('on'))).length,
    images: seen,
  };
})()"""


@dataclass
class Rendered:
    """What the browser saw of one page."""

    title: str
    html_attrs: dict
    body_attrs: dict
    sections: list
    headings: list
    text: str
    n_scripts: int
    n_elements_with_handlers: int
    images: list
    scripts_parsed: list = field(default_factory=list)  # urls of scripts the page compiled
    requests: list = field(default_factory=list)        # urls the page asked for
    console: list = field(default_factory=list)


def chromium() -> str:
    """The browser's path; a test fails (not skips) without it."""
    path = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    if not path:
        pytest.fail(f"Debian's chromium is not installed ({CHROMIUM} missing): `make test` "
                    f"installs it (apt-get install -y chromium, as root); without apt, install "
                    f"it by hand or point DIGITBATCH_CHROMIUM at a Chromium binary",
                    pytrace=False)
    return path


class _Pipe:
    def __init__(self, proc, write_fd: int, read_fd: int):
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.w, data):]
        return self.next_id

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"chromium did not answer (exit status {self.proc.poll()})")
            ready, _, _ = select.select([self.r], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise AssertionError("chromium closed its DevTools pipe")
                self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        want = self.send(method, params, session)
        deadline = time.monotonic() + HANG_SECONDS
        while True:
            msg = self._read(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise AssertionError(f"DevTools {method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, session: str) -> dict:
        for i, msg in enumerate(self.events):
            if msg.get("method") == method and msg.get("sessionId") == session:
                return self.events.pop(i)
        deadline = time.monotonic() + HANG_SECONDS
        while True:
            msg = self._read(deadline)
            self.events.append(msg)
            if msg.get("method") == method and msg.get("sessionId") == session:
                return self.events.pop()


def _end_group(pgid: int) -> None:
    """Kill what is left of Chromium's process group and wait until it is gone, so
    that nothing writes into its profile folder while the folder is removed."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(1000):  # (killed processes go within milliseconds)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"chromium's processes (group {pgid}) did not end after SIGKILL")


def render(page: str | os.PathLike) -> Rendered:
    """Load ``page`` (a local HTML file) in headless Chromium; what it rendered and did."""
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="digitbatch-chromium-") as profile:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes answers on fd 4: its ends are
        # moved above 10 first, so that putting them at 3 and 4 clobbers neither
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        log = open(Path(profile) / "chromium.log", "wb")
        try:
            proc = subprocess.Popen(
                [chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=False,
                start_new_session=True,  # (its helper processes too: ended together below)
                preexec_fn=lambda: (os.dup2(child_in, 3), os.dup2(child_out, 4)))
        finally:
            os.close(child_in)
            os.close(child_out)
            log.close()
        pipe = _Pipe(proc, to_browser_w, from_browser_r)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget",
                                {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Network", "Debugger", "Runtime"):
                pipe.call(f"{domain}.enable", {}, session)
            pipe.call("Page.navigate", {"url": url}, session)
            pipe.wait_event("Page.loadEventFired", session)
            seen_before = [e for e in pipe.events if e.get("sessionId") == session]
            got = pipe.call("Runtime.evaluate", {"expression": _INSPECT, "awaitPromise": True,
                                                 "returnByValue": True}, session)
            if "exceptionDetails" in got:
                raise AssertionError(f"inspecting the page failed: {got['exceptionDetails']}")
            v = got["result"]["value"]
        finally:
            for fd in (to_browser_w, from_browser_r):
                os.close(fd)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _end_group(proc.pid)  # its zygote and renderers may still write into the profile
    scripts = [e["params"].get("url", "") for e in seen_before
               if e.get("method") == "Debugger.scriptParsed"]
    requests = [e["params"]["request"]["url"] for e in seen_before
                if e.get("method") == "Network.requestWillBeSent"]
    console = [e["params"] for e in seen_before if e.get("method") == "Runtime.consoleAPICalled"]
    return Rendered(v["title"], v["htmlAttrs"], v["bodyAttrs"], v["sections"], v["headings"],
                    v["text"], v["nScripts"], v["nElementsWithHandlers"], v["images"],
                    scripts, requests, console)


def check_page(page: str | os.PathLike, *, sections=(), headings=(), min_images: int = 1
               ) -> Rendered:
    """Render ``page`` and check it: no script compiled or run, nothing requested but the
    page itself and its data: URIs, the sections and headings present, every image decoded."""
    r = render(page)
    url = Path(page).resolve().as_uri()
    assert r.scripts_parsed == [], f"the page ran scripts: {r.scripts_parsed}"
    assert r.n_scripts == 0 and r.n_elements_with_handlers == 0
    assert "pwned" not in r.title and not any("pwned" in k or "pwned" in v for attrs in
                                              (r.html_attrs, r.body_attrs)
                                              for k, v in attrs.items()), (r.title, r.body_attrs)
    outside = [u for u in r.requests if u != url and not u.startswith("data:")]
    assert outside == [], f"the page fetched {outside}"
    for s in sections:
        assert s in r.sections, (s, r.sections)
    for h in headings:
        assert any(h == x.strip() for x in r.headings), (h, r.headings)
    assert len(r.images) >= min_images, r.images
    for img in r.images:
        assert img["error"] is None and img["complete"], img
        assert img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
    return r
