"""The built site in a real headless browser (Debian's Chromium driven by Playwright).

Checks every chapter page: it loads, no image is broken, math is typeset by
MathJax, and its "Open in Colab" link points at that chapter's notebook.
Runs when Chromium, Playwright and a built site are present; skipped with the
reason otherwise. `make test` checks the un-executed build, `make book` the
executed one. No network: MathJax's CDN address is served from the local
`django-static-mathjax` copy and every other outside request is refused.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from encnet_lite import runtime

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SITE_CANDIDATES = [ROOT / "_build" / "html", ROOT / "_build" / "check" / "_build" / "html"]


def _site_dir() -> Path | None:
    if os.environ.get("ENCNET_SITE"):
        return Path(os.environ["ENCNET_SITE"])
    return next((d for d in SITE_CANDIDATES if (d / "index.html").exists()), None)


def _chapter_stems() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    stems = [toc["root"]]
    for part in toc.get("parts", []):
        stems += [c["file"] for c in part["chapters"]]
    return stems


def _mathjax_dir() -> Path | None:
    try:
        import mathjax  # django-static-mathjax
    except ImportError:
        return None
    path = Path(mathjax.__file__).parent / "static" / "mathjax"
    return path if (path / "es5" / "tex-mml-chtml.js").exists() else None


@pytest.fixture(scope="module")
def site():
    site = _site_dir()
    if site is None:
        pytest.skip("no built site: run `make book` (or `make book-check`) first")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


def _route_offline(page, base: str, mathjax: Path | None) -> None:
    """Serve MathJax from disk, allow the local site, refuse everything else."""

    def handle(route):
        url = route.request.url
        if url.startswith(base) or url.startswith("data:"):
            return route.continue_()
        if mathjax is not None and "mathjax" in url and "/es5/" in url:
            local = mathjax / "es5" / url.split("/es5/", 1)[1].split("?")[0]
            if local.is_file():
                return route.fulfill(path=str(local))
        return route.abort()

    page.route("**/*", handle)


@pytest.mark.parametrize("stem", _chapter_stems())
def test_chapter_page(site, browser, stem):
    site_dir, base = site
    mathjax = _mathjax_dir()
    page = browser.new_page()
    _route_offline(page, base, mathjax)
    response = page.goto(f"{base}/{stem}.html", wait_until="load")
    assert response is not None and response.status == 200, f"{stem}.html did not load"
    assert page.locator("main h1").count() >= 1, f"{stem}.html has no title"

    broken = page.evaluate(
        "() => Array.from(document.images)"
        ".filter(img => !img.complete || img.naturalWidth === 0).map(img => img.src)"
    )
    assert broken == [], f"{stem}.html has broken images: {broken}"

    if page.locator("main .math").count() > 0:
        assert mathjax is not None, "pip install django-static-mathjax (the offline MathJax)"
        # Every formula typeset (hidden ones too, e.g. inside a collapsed dropdown).
        page.wait_for_function(
            "() => document.querySelectorAll('main .math').length === "
            "document.querySelectorAll('main .math mjx-container').length",
            timeout=30_000,
        )
        errors = page.locator("mjx-merror").count()
        assert errors == 0, f"{stem}.html: {errors} formulas MathJax could not typeset"

    if (ROOT / f"{stem}.ipynb").exists():
        want = (
            "https://colab.research.google.com/github/"
            + runtime.REPO_URL.split("github.com/", 1)[1]
            + f"/blob/{runtime.REPO_REF}/{stem}.ipynb"
        )
        hrefs = page.eval_on_selector_all(
            "a[href*='colab.research.google.com']", "els => els.map(e => e.href)"
        )
        assert want in hrefs, f"{stem}.html: Colab link {hrefs} should be {want}"

    if stem.endswith("00_setup"):
        page.screenshot(path=str(site_dir.parent / "screenshot_setup.png"), full_page=False)
    page.close()
