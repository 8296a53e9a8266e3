"""The book builds offline with every warning an error, and renders in a real browser."""

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import CHAPTER_SCRIPTS, ROOT

BROWSER_CHECK = """<!doctype html><meta charset="utf-8"><title>check</title>
<iframe id="page" src="PAGE" style="width:1200px;height:900px"></iframe>
<pre id="result">pending</pre>
<script>
window.onerror = (msg) => { document.getElementById("result").textContent = "error " + msg; };
function report() {
  const doc = document.getElementById("page").contentDocument;
  const images = [...doc.querySelectorAll("img")];
  document.getElementById("result").textContent = JSON.stringify({
    title: doc.title,
    math: doc.querySelectorAll("mjx-container").length,
    raw_tex: (doc.body.innerText.match(/\\$\\$|\\\\frac|\\\\sum_/g) || []).length,
    raw_tables: (doc.body.innerText.match(/\\|\\s*---\\s*\\|/g) || []).length,
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  });
}
document.getElementById("page").onload = () => setTimeout(report, 4000);
</script>"""


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [
            str(jb),
            "build",
            str(ROOT),
            "--all",
            "-W",
            "-n",
            "--keep-going",
            "--path-output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return out / "_build" / "html"


@pytest.mark.slow
def test_book_builds_with_every_page(built_book):
    assert (built_book / "index.html").is_file()
    for script in CHAPTER_SCRIPTS:
        page = built_book / script.relative_to(ROOT).with_suffix(".html")
        assert page.is_file(), f"{page.name} missing from the build"
    assert (built_book / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax not vendored"


@pytest.mark.slow
def test_pages_load_nothing_from_the_internet(built_book):
    for page in built_book.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        remote = [url for url in remote if not url.startswith("https://github.com")]
        assert not remote, f"{page.relative_to(built_book)} loads {remote}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    missing: list[str]

    def log_message(self, *args):
        pass

    def send_error(self, code, *args, **kwargs):
        if code == 404 and not self.path.endswith("favicon.ico"):
            self.missing.append(self.path)
        super().send_error(code, *args, **kwargs)


def _chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


@pytest.mark.slow
@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=[p.stem for p in CHAPTER_SCRIPTS])
def test_chapter_renders_in_a_browser(built_book, script, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("NOISEFIT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (apt-get install chromium)")
        pytest.skip(
            "no chromium on PATH (apt-get install chromium); set "
            "NOISEFIT_REQUIRE_BROWSER=1 to make this a failure"
        )
    page = script.relative_to(ROOT).with_suffix(".html").as_posix()
    (built_book / "browser_check.html").write_text(BROWSER_CHECK.replace("PAGE", page))
    handler = type("Handler", (_Handler,), {"missing": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(built_book))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/browser_check.html"
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        server.shutdown()
        (built_book / "browser_check.html").unlink()
    found = re.search(r'<pre id="result">(.*?)</pre>', result.stdout, flags=re.S)
    assert found and found.group(1).startswith("{"), result.stdout[-2000:] + result.stderr[-2000:]
    state = json.loads(found.group(1).replace("&amp;", "&"))
    assert state["math"] > 10, f"math not rendered: {state}"
    assert state["raw_tex"] == 0, f"raw TeX visible: {state}"
    assert state["raw_tables"] == 0, f"Markdown tables shown as text: {state}"
    assert state["images"] >= 1 and not state["broken"], f"images not loaded: {state}"
    assert not handler.missing, f"requests that failed: {handler.missing}"
