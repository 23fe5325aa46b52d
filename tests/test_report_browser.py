"""The report in a real browser: headless Chromium renders the report of a tiny pipeline run at 1280 px.

Asserted: every image decoded (naturalWidth > 0), nothing wider than the viewport (no horizontal scroll,
no element past the right edge), no JavaScript or console errors, and the first screen holds the claims
and the forest plot. A screenshot is saved as the test's artifact (``$NEGDIFF_ARTIFACTS`` or the test's
temporary folder). The checker is a script injected into a *copy* of the report (the report itself has
no script); Chromium's ``--dump-dom`` returns the page after the script ran.

Run with ``NEGDIFF_DATA=../shared/data python3 -m pytest -q -m browser`` (needs ``chromium``: Debian's
package, ``apt-get install chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import DATA

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")]

CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
const _ce = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); _ce(...a); };
window.addEventListener('load', () => {
  const vw = window.innerWidth, doc = document.documentElement;
  const imgs = [...document.images];
  const wide = [...document.querySelectorAll('body *')].filter(el => {
    const r = el.getBoundingClientRect(); return r.width > 0 && r.right > vw + 0.5; }).map(el => el.tagName + '.' + el.className);
  const out = {viewport: vw, scrollWidth: doc.scrollWidth, images: imgs.length,
               broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
               overflowing: wide.slice(0, 10), errors: window.__errors,
               badges: document.querySelectorAll('#claims .badge').length,
               forest: document.querySelectorAll('#claims svg.forest').length,
               claimsBottom: document.querySelector('table.claims').getBoundingClientRect().bottom};
  const pre = document.createElement('pre'); pre.id = '__result'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str) -> str:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1280,900", *args], capture_output=True, text=True, timeout=180).stdout


@pytest.fixture(scope="module")
def tiny_report(tiny_model_dir, tmp_path_factory):
    """report.html of the tiny pipeline run (the sizes test_reproduce uses)."""
    import negdiff.reproduce as reproduce
    from negdiff import load_model
    from test_reproduce import TINY

    env = pytest.MonkeyPatch()
    env.setenv("NEGDIFF_DATA", str(DATA))
    run = tmp_path_factory.mktemp("browser") / "run"
    reproduce.run_reproduce(load_model(str(tiny_model_dir)), run, "quick", 0, "negdiff reproduce test", overrides=TINY)
    yield run / "report.html"
    env.undo()


def test_report_renders_whole_in_chromium(tiny_report, tmp_path):
    page = tiny_report.read_text()
    assert "<script" not in page  # the shipped report runs no code
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + CHECK, 1))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="__result">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    figures = list(tiny_report.parent.glob("*/figures/*.png"))
    assert result["images"] == len(figures) > 10 and result["broken"] == []
    assert result["viewport"] == 1280 and result["scrollWidth"] <= 1280 and result["overflowing"] == []
    assert result["errors"] == []
    assert result["badges"] >= 8 and result["forest"] >= 3
    artifacts = Path(os.environ.get("NEGDIFF_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report_1280.png"
    _chromium("--window-size=1280,2000", f"--screenshot={shot}", tiny_report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000


def test_the_probe_catches_what_it_claims_to(tiny_report, tmp_path):
    """The checker can fail: a broken image, an overflowing table and a script error are all reported."""
    page = tiny_report.read_text().replace("</main>", '<img alt="missing" src="data:image/png;base64,AAAA">'
                                           '<table style="width:2400px"><tr><td>x</td></tr></table>'
                                           "<img alt='x' src='x.png' onerror='undefined_fn()'></main>")
    probe = tmp_path / "bad.html"
    probe.write_text(page.replace("<head>", "<head>" + CHECK, 1))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    result = json.loads(re.search(r'<pre id="__result">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"')
                        .replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert "missing" in result["broken"] and result["scrollWidth"] > 1280 and result["overflowing"]
    assert any("undefined_fn" in e for e in result["errors"])
