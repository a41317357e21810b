"""The built site in a real headless browser (Debian's Chromium driven by Playwright).

Every page of the table of contents is opened from disk (``file://``, as a reader opens
a saved site) with every other request refused and recorded: the site must work with
no network at all. Per page: no request left the page, no broken image, every formula
typeset by the site's own MathJax (no raw TeX left), no raw Markdown table text, no
blank interactive output, no output block wider than the content column (a printed line
that the site has to wrap is reported as a warning), and the "Open in Colab" link points
at the chapter's notebook. Chapters 01-07 must have a Summary and an Exercises section
and cite at least one work of the References page.

Runs when Chromium, Playwright and a built site are present; skipped with the reason
otherwise. `make test` checks the un-executed build (`make book-check`), `make book`
the executed one. ``ENCNET_SCREENSHOTS=<folder>`` saves a full-page screenshot of
every page there.

Reading checks (issue 24), at a 1280 px and a 400 px (phone) window:

- nothing sticks out sideways: at 1280 px no code cell, output, table or display equation
  scrolls or is wider than its column; at 400 px the page itself never scrolls sideways
  and tables and outputs fit, while a code cell or a display equation may scroll inside
  its own box (``_static/outputs.css``), which hides nothing;
- figure text is never displayed below ``viz.style.MIN_TEXT_PX`` at 1280 px. Each figure
  PNG carries, as a tEXt chunk written by ``viz.style.figure_png``, the size in PNG pixels
  of its smallest text (font points x dpi / 72, taken from the drawn figure, so it holds
  whatever the figure size, dpi or cropping); the page shows the PNG at displayed width /
  natural width of that, which is what the reader sees. A figure without the stamp was
  not drawn through ``encnet_lite.viz`` and fails. At 400 px figures scale with the column
  (a phone reader zooms), so the size is checked at 1280 px only;
- every figure a chapter's cells draw carries a number and a caption (a
  ``span.caption-number`` "Figure N" in its ``<figure>``).
"""


from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from encnet_lite import runtime
from encnet_lite.viz import style

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SITE_CANDIDATES = [ROOT / "_build" / "html", ROOT / "_build" / "check" / "_build" / "html"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
CHAPTER = re.compile(r"book/0[1-7]_")
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\$[^\s$][^$\n]{0,80}?[^\s$\\]\$")
# A Markdown table left as text: "|---|" (Sphinx's smart quotes turn "---" into an em dash).
RAW_TABLE = re.compile(r"\|\s*:?(?:-{3,}|[\u2014\u2013]+)\s*:?\|")

# Everything the page shows outside code *inputs*, after MathJax: outputs are included.
VISIBLE_TEXT_JS = """() => {
  const main = document.querySelector('main').cloneNode(true);
  main.querySelectorAll('.cell_input, code, mjx-container, script, style, '
                        + '.headerlink, nav').forEach(e => e.remove());
  return main.textContent;
}"""

# An interactive output (ipywidgets) with nothing a reader can see in its output area.
BLANK_WIDGETS_JS = """() => {
  const scripts = document.querySelectorAll(
      'main script[type="application/vnd.jupyter.widget-view+json"]');
  return Array.from(scripts).filter(s => {
    const area = s.closest('.cell_output') || s.parentElement;
    const media = Array.from(area.querySelectorAll('img, svg, canvas'))
        .some(m => m.getBoundingClientRect().width > 0);
    return area.innerText.trim().length === 0 && !media;
  }).map(s => s.textContent.slice(0, 80));
}"""

# Output blocks that scroll sideways or stick out of the content column (px), and printed
# lines too long for the column (the site wraps them, _static/outputs.css: a wrapped line
# makes its block taller than its line count).
WIDE_OUTPUTS_JS = """() => {
  const column = document.querySelector('main article') || document.querySelector('main');
  const right = column.getBoundingClientRect().right;
  const wide = [], wrapped = [];
  const first = el => el.innerText.trim().split('\\n')[0].slice(0, 60);
  document.querySelectorAll('main .cell_output, main .cell_output pre, '
                            + 'main .cell_output table, main .cell_output img').forEach(el => {
    const box = el.getBoundingClientRect();
    if (box.width === 0) return;  // hidden (collapsed) outputs
    const over = Math.max(el.scrollWidth - el.clientWidth, box.right - right);
    if (over > 2) wide.push(`${el.tagName.toLowerCase()} ${Math.round(over)} px: ${first(el)}`);
    if (el.tagName !== 'PRE') return;
    const css = getComputedStyle(el);
    const lh = parseFloat(css.lineHeight) || 1.2 * parseFloat(css.fontSize);
    const lines = el.innerText.replace(/\\n+$/, '').split('\\n').length;
    const height = el.clientHeight - parseFloat(css.paddingTop) - parseFloat(css.paddingBottom);
    if (height > (lines + 0.5) * lh) wrapped.push(first(el));
  });
  return {wide, wrapped};
}"""


# Horizontal overflow at the current window (``strict``: the 1280 px rules; otherwise the
# phone rules, where code and display equations may scroll inside their own box).
OVERFLOW_JS = """(strict) => {
  const out = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth + 1)
    out.push(`page ${doc.scrollWidth - doc.clientWidth} px wider than the window`);
  const column = document.querySelector('main article') || document.querySelector('main');
  const right = column.getBoundingClientRect().right;
  const label = el => (el.innerText || el.textContent || '').trim().split('\\n')[0].slice(0, 50);
  const check = (selector, kind, scrolls) => document.querySelectorAll(selector).forEach(el => {
    const box = el.getBoundingClientRect();
    if (box.width === 0) return;  // hidden (collapsed)
    const over = Math.max(scrolls ? el.scrollWidth - el.clientWidth : 0, box.right - right);
    if (over > 2) out.push(`${kind} ${Math.round(over)} px: ${label(el)}`);
  });
  check('main .cell_output, main .cell_output pre, main table', 'output/table', true);
  check('main .cell_output img, main figure img', 'figure', false);
  if (strict) {
    check('main .cell_input pre', 'code', true);
    check('main mjx-container[display="true"]', 'equation', true);
    check('main div.math', 'equation', true);
  }
  return out;
}"""

# The figures a page shows: (file URL, natural width, displayed width, numbered caption?).
FIGURES_JS = """() => Array.from(document.querySelectorAll('main .cell_output img, main figure img'))
  .filter(i => i.getBoundingClientRect().width > 0 && i.src.includes('/_images/'))
  .map(i => {
    const fig = i.closest('figure');
    const number = fig ? fig.querySelector('.caption-number') : null;
    return [i.src, i.naturalWidth, i.getBoundingClientRect().width,
            number ? number.textContent.trim() : ''];
  })"""

def _site_dir() -> Path | None:
    if os.environ.get("ENCNET_SITE"):
        return Path(os.environ["ENCNET_SITE"])
    return next((d for d in SITE_CANDIDATES if (d / "index.html").exists()), None)


def _page_stems() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    stems = [toc["root"]]
    for part in toc.get("parts", []):
        stems += [c["file"] for c in part["chapters"]]
    return stems


def _chapter_stems() -> list[str]:
    return [s for s in _page_stems() if CHAPTER.match(s)]


@pytest.fixture(scope="module")
def site() -> Path:
    site = _site_dir()
    if site is None or not (site / "index.html").exists():
        pytest.skip("no built site: run `make book` (or `make book-check`) first")
    return site.resolve()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield b
        b.close()


def _inspect(browser, site: Path, stem: str, width: int = 1280) -> dict:
    """Open one page offline in a ``width`` px window and collect what the tests check
    (at 400 px only the overflow)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    refused: list[str] = []

    def handle(route):
        url = route.request.url
        if url.startswith(LOCAL_SCHEMES):
            return route.continue_()
        refused.append(url)
        return route.abort()

    page.route("**/*", handle)
    page.goto((site / f"{stem}.html").as_uri(), wait_until="load")
    report = {"title": page.locator("main h1").count(), "typeset": True}
    if page.locator("main .math").count() > 0:
        try:  # every formula, hidden ones too (e.g. inside a collapsed dropdown)
            page.wait_for_function(
                "() => document.querySelectorAll('main .math').length === "
                "document.querySelectorAll('main .math mjx-container').length",
                timeout=30_000)
        except Exception:  # reported by the test, with the page named
            report["typeset"] = False
    page.wait_for_timeout(300)  # fonts and late requests
    report["overflow"] = page.evaluate(OVERFLOW_JS, width >= 1280)
    if width < 1280:
        page.close()
        return report
    text = page.evaluate(VISIBLE_TEXT_JS)
    report.update(
        refused=refused,
        broken=page.evaluate("() => Array.from(document.images).filter(i => !i.complete "
                             "|| i.naturalWidth === 0).map(i => i.src)"),
        merror=page.locator("mjx-merror").count(),
        raw_tex=sorted({m.group(0) for m in RAW_TEX.finditer(text)}),
        raw_table=[text[max(m.start() - 30, 0):m.end() + 30] for m in RAW_TABLE.finditer(text)],
        blank_widgets=page.evaluate(BLANK_WIDGETS_JS),
        **page.evaluate(WIDE_OUTPUTS_JS),
        headings=[h.strip().rstrip("#").strip() for h in page.eval_on_selector_all(
            "main h2", "els => els.map(e => e.innerText)")],
        citations=page.eval_on_selector_all(
            "main a[href*='references.html#']", "els => els.map(e => e.innerText)"),
        colab=page.eval_on_selector_all(
            "a[href*='colab.research.google.com']", "els => els.map(e => e.href)"),
        figures=page.evaluate(FIGURES_JS),
    )
    shots = os.environ.get("ENCNET_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(shots) / f"{stem.replace('/', '_')}.png"), full_page=True)
    page.close()
    return report


@pytest.fixture(scope="module")
def reports(site, browser):
    cache: dict = {}

    def get(stem: str, width: int = 1280) -> dict:
        if (stem, width) not in cache:
            cache[stem, width] = _inspect(browser, site, stem, width)
        return cache[stem, width]

    return get


@pytest.mark.parametrize("stem", _page_stems())
def test_page_works_offline(reports, stem):
    r = reports(stem)
    assert r["title"] >= 1, f"{stem}.html has no title"
    assert r["refused"] == [], f"{stem}.html requested the network: {r['refused']}"
    assert r["broken"] == [], f"{stem}.html has broken images: {r['broken']}"


@pytest.mark.parametrize("stem", _page_stems())
def test_math_is_typeset(reports, stem):
    r = reports(stem)
    assert r["typeset"], f"{stem}.html: MathJax did not typeset every formula offline"
    assert r["merror"] == 0, f"{stem}.html: {r['merror']} formulas MathJax could not typeset"
    assert r["raw_tex"] == [], f"{stem}.html shows raw TeX: {r['raw_tex']}"


@pytest.mark.parametrize("stem", _page_stems())
def test_tables_render(reports, stem):
    r = reports(stem)
    assert r["raw_table"] == [], f"{stem}.html shows raw Markdown table text: {r['raw_table']}"


@pytest.mark.parametrize("stem", _page_stems())
def test_no_blank_interactive_output(reports, stem):
    r = reports(stem)
    assert r["blank_widgets"] == [], f"{stem}.html: blank interactive outputs {r['blank_widgets']}"


@pytest.mark.parametrize("stem", _page_stems())
def test_outputs_fit_the_column(reports, stem):
    r = reports(stem)
    assert r["wide"] == [], f"{stem}.html: output blocks wider than the column: {r['wide']}"
    if r["wrapped"]:  # readable (wrapped, nothing cut off), but a cell could print shorter lines
        warnings.warn(f"{stem}.html: printed lines wider than the column (wrapped; at most "
                      f"76 characters fit): {r['wrapped']}", stacklevel=1)


@pytest.mark.parametrize("width", [1280, 400])
@pytest.mark.parametrize("stem", _page_stems())
def test_nothing_overflows_sideways(reports, stem, width):
    overflow = reports(stem, width)["overflow"]
    assert overflow == [], f"{stem}.html at {width} px: wider than its column: {overflow}"


def _stamp(src: str) -> float | None:
    """The smallest-text stamp of a figure PNG on disk (``src``: its file URL)."""
    return style.stamped_text_px(Path(unquote(urlparse(src).path)).read_bytes())


@pytest.mark.parametrize("stem", _page_stems())
def test_figure_text_is_readable(reports, stem):
    small = []
    for src, natural, shown, _ in reports(stem)["figures"]:
        px = _stamp(src)
        name = src.rsplit("/", 1)[-1][:12]
        if px is None:
            small.append(f"{name}: no text-size stamp (draw it with encnet_lite.viz)")
        elif px * shown / natural < style.MIN_TEXT_PX:
            small.append(f"{name}: {px * shown / natural:.1f} px ({natural} px PNG shown at "
                         f"{shown:.0f} px)")
    assert small == [], (f"{stem}.html: figure text below {style.MIN_TEXT_PX:g} px at 1280 px: "
                         f"{small}")


@pytest.mark.parametrize("stem", [s for s in _page_stems() if (ROOT / f"{s}.ipynb").exists()])
def test_figures_are_numbered(reports, stem):
    figures = reports(stem)["figures"]
    unnumbered = [src.rsplit("/", 1)[-1][:12] for src, _, _, number in figures
                  if not number.startswith("Figure")]
    assert unnumbered == [], (f"{stem}.html: {len(unnumbered)} of {len(figures)} figures have "
                              f"no number and caption: {unnumbered}")


@pytest.mark.parametrize("stem", [s for s in _page_stems() if (ROOT / f"{s}.ipynb").exists()])
def test_colab_link(reports, stem):
    want = ("https://colab.research.google.com/github/"
            + runtime.REPO_URL.split("github.com/", 1)[1]
            + f"/blob/{runtime.REPO_REF}/{stem}.ipynb")
    assert want in reports(stem)["colab"], f"{stem}.html: Colab link should be {want}"


@pytest.mark.parametrize("stem", _chapter_stems())
def test_chapter_has_summary_exercises_and_citations(reports, stem):
    r = reports(stem)
    # Section numbers come first on a numbered chapter: "4.5. Summary".
    titles = [re.sub(r"^(\d+\.)+\s*", "", h) for h in r["headings"]]
    for heading in ("Summary", "Exercises"):
        assert heading in titles, f"{stem}.html has no '## {heading}' ({r['headings']})"
    assert r["citations"], f"{stem}.html cites nothing from the References page"


def test_references_list_every_bib_entry(reports, site):
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    keys = re.findall(r"^@\w+\{([^,]+),", bib, flags=re.M)
    html = (site / "book" / "references.html").read_text(encoding="utf-8")
    entries = re.findall(r'role="doc-biblioentry"', html)
    assert len(keys) >= 14 and len(entries) == len(keys), (len(entries), keys)
    r = reports("book/references")
    assert r["refused"] == [] and r["title"] >= 1
