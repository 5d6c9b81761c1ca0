"""report.html in a real browser (Debian's headless Chromium, tests/browser.py): its sections
and images render, and a script in a key, a folder or a path is shown as text, never run.

The browser check itself is checked too: a page that does run a script is caught.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from digitbatch.report import write_report
from digitbatch.scoring.api import score

from .browser import check_page, render
from .conftest import synthetic_digits

# a folder name cannot hold "/": the script payload spans two folders, the path holds it whole
SCRIPT = "<script>document.body.setAttribute('data-pwned','1')</script>"
HANDLER = "<img src=x onerror=\"document.title='pwned'\">"
REPORT_HEADINGS = ("digitbatch report", "Inputs", "Model", "Metrics", "Per class",
                   "Confusion matrix", "Most confident mistakes", "Doubtful predictions",
                   "Timings")


def test_report_renders_and_runs_no_script_from_keys_or_paths(tmp_path, shared_model):
    from PIL import Image

    d = tmp_path / f"night{SCRIPT}"
    imgs = d / f"imgs{HANDLER}"
    x, y = synthetic_digits(120, seed=3)
    shown = (y + (np.arange(120) % 20 == 0)) % 10  # a few wrong folders: mistakes to show
    for i in range(120):
        (imgs / str(shown[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(imgs / str(shown[i]) / f"{HANDLER}{SCRIPT[:8]}{i:03d}.png")
    model = d / f"model{HANDLER}"
    shutil.copytree(shared_model, model)
    score(imgs, model=model, out=d / "p.zarr", scheduler="synchronous")
    r = write_report(d / "p.zarr", out=d / "report", top_k=8)
    assert r.n_wrong > 0
    text = (d / "report" / "report.html").read_text()
    assert SCRIPT not in text and HANDLER not in text
    pngs = [k for k, v in r.files.items() if v.endswith(".png")]
    assert {"confusion", "per_class", "errors", "doubtful"} <= set(pngs)
    seen = check_page(r.html, headings=REPORT_HEADINGS, min_images=4)
    assert len(seen.images) == len(pngs)  # every figure of the report, each decoded
    assert str(imgs) in seen.text and str(model) in seen.text  # shown as text


def test_the_browser_check_catches_a_page_that_runs_scripts(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>t</title></head><body><h1>x</h1>"
                    f"{HANDLER}{SCRIPT}</body></html>")
    seen = render(page)
    assert seen.title == "pwned" and seen.body_attrs.get("data-pwned") == "1"
    assert len(seen.scripts_parsed) >= 1 and seen.images[0]["naturalWidth"] == 0
    with pytest.raises(AssertionError, match="ran scripts"):
        check_page(page)
    good = tmp_path / "good.html"
    good.write_text("<!DOCTYPE html><html><body><section id=a><h2>A</h2>"
                    "<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAf"
                    "FcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==\"></section>"
                    "</body></html>")
    check_page(good, sections=("a",), headings=("A",))
    with pytest.raises(AssertionError):  # a section that is not there
        check_page(good, sections=("b",))
    broken = tmp_path / "broken.html"
    broken.write_text(good.read_text().replace("</section>",
                                               '<img src="data:image/png;base64,AAAA"></section>'))
    with pytest.raises(AssertionError):  # an image the browser cannot decode
        check_page(broken, sections=("a",))


def test_no_chromium_fails_with_how_to_install(monkeypatch):
    import tests.browser as browser

    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        browser.chromium()
