"""The run's ``index.html``: self-contained (no URL outside the folder), every study and head report on it,
and, where Debian's ``chromium`` (or another Chromium) is installed, rendered headless: every image loads
and no script error occurs."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from interp_tl.cli import main
from interp_tl.htmlpage import cell
from interp_tl.studies import STUDIES

FAST = ["--n-pairs", "10", "--n-perms", "50", "--quiet"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """``interp-tl all`` with the fastest settings, then ``interp-tl head 1.3``, into one folder."""
    out = tmp_path_factory.mktemp("html") / "run"
    assert main(["all", *FAST, "--n-boot", "0", "--surgery.eval-per-category", "1", "--surgery.sweep-k", "1",
                 "--surgery.sweep-alpha", "1", "--jacobian.n-problems", "5", "--out", str(out)]) == 0
    assert main(["head", "1.3", *FAST, "--out", str(out)]) == 0
    return out


class _Page(HTMLParser):
    """Every element with its attributes, and the text of <style>."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data


def page_problems(out: Path, text: str) -> list[str]:
    """What keeps the page from being self-contained: external URLs, scripts, targets missing from ``out``."""
    page = _Page()
    page.feed(text)
    problems = []
    for tag, attrs in page.elements:
        if tag in ("script", "link", "iframe", "object", "embed"):
            problems.append(f"<{tag}> element")
        for key in ("src", "href"):
            target = attrs.get(key)
            if target is None or target.startswith("#"):
                continue
            if re.match(r"^[a-z][a-z0-9+.-]*:|^//", target, re.I):
                problems.append(f"external {key}: {target}")
            elif not (out / target).is_file():
                problems.append(f"missing {key}: {target}")
    if "url(" in page.style or "@import" in page.style:
        problems.append("CSS loads a resource")
    return problems


def test_the_page_is_self_contained_and_shows_every_study(report_run):
    text = (report_run / "index.html").read_text("utf-8")
    assert page_problems(report_run, text) == []
    index = json.loads((report_run / "index.json").read_text("utf-8"))
    for entry in index["studies"]:
        assert f'<section id="{entry["study"]}">' in text
        assert f'<img src="{entry["study"]}.png"' in text and f'href="{entry["study"]}.json"' in text
    assert [e["study"] for e in index["studies"]] == list(STUDIES)
    assert [e["head"] for e in index["heads"]] == ["L1H3"]
    assert index["mixed_runs"] is False and "more than one run" not in text  # a head report adds, same model
    assert '<img src="head_L1H3.png"' in text and 'href="head_L1H3.json"' in text
    assert text.count("<details><summary>Provenance</summary>") == len(STUDIES) + 1
    # the key table holds the JSON's numbers (alignment: the exact-null z per layer)
    rows = json.loads((report_run / "alignment.json").read_text("utf-8"))["layer_results"]
    first = "".join(f"<td>{cell(rows[0][k])}</td>" for k in ("layer", "z_exact_pre", "z_exact_post_attn"))
    assert first in text


def test_the_checker_finds_what_breaks_a_page(report_run):
    """The check above can fail: an external image, a script, a missing file are each reported."""
    bad = ('<img src="https://example.org/x.png"><script>1</script><a href="nothing.json">x</a>'
           '<img src="alignment.png"><style>body { background: url(x.png) }</style>')
    assert page_problems(report_run, bad) == ["external src: https://example.org/x.png", "<script> element",
                                              "missing href: nothing.json", "CSS loads a resource"]


def test_the_head_figure_and_the_index_of_a_single_study(report_run, tmp_path):
    """A single study writes the same index (md, json, html) from the files present."""
    out = tmp_path / "one"
    assert main(["embedding", *FAST, "--n-boot", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["embedding.json", "embedding.png", "index.html", "index.json",
                                                     "index.md"]
    assert page_problems(out, (out / "index.html").read_text("utf-8")) == []
    assert (report_run / "head_L1H3.png").read_bytes()[:4] == b"\x89PNG"
    # a head report from another model makes the folder a mixed one, and the page says so
    assert main(["head", "0.1", *FAST, "--model", "interp-tl/toy-random", "--out", str(out)]) == 0
    assert json.loads((out / "index.json").read_text("utf-8"))["mixed_runs"] is True
    assert "more than one run" in (out / "index.html").read_text("utf-8")


def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


PROBE_HEAD = ('<script>window.__errors=[];window.addEventListener("error",function(e){window.__errors.push('
              'e.message||("could not load "+(e.target&&(e.target.src||e.target.href))))},true);</script>')
PROBE_TAIL = ('<script>window.addEventListener("load",function(){var r={images:Array.from(document.images).map('
              'function(i){return {src:i.getAttribute("src"),complete:i.complete,width:i.naturalWidth}}),'
              'errors:window.__errors};var p=document.createElement("pre");p.id="probe-result";'
              'p.textContent=JSON.stringify(r);document.body.appendChild(p);});</script>')


def render_in_browser(browser: str, folder: Path, profile: Path) -> dict:
    """Load ``folder/index.html`` headless with no network (a copy with a probe script), return what the probe saw."""
    text = (folder / "index.html").read_text("utf-8")
    probe = text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1)
    (folder / "probe.html").write_text(probe, "utf-8")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--virtual-time-budget=10000", "--host-resolver-rules=MAP * ~NOTFOUND",
                           "--dump-dom", (folder / "probe.html").as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert found is not None, f"the browser did not render the page (exit {done.returncode}): {done.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_the_page_renders_in_headless_chromium(report_run, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser installed (looked for {', '.join(BROWSERS)} on PATH; "
                    "Debian: apt-get install chromium)")
    folder = tmp_path / "page"
    shutil.copytree(report_run, folder)
    seen = render_in_browser(browser, folder, tmp_path / "profile")
    expected = [f"{name}.png" for name in STUDIES] + ["head_L1H3.png"]
    assert [i["src"] for i in seen["images"]] == expected
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert seen["errors"] == []
    # the probe can fail: with one figure gone, the browser reports it
    (folder / "layers.png").unlink()
    broken = render_in_browser(browser, folder, tmp_path / "profile")
    assert [i["src"] for i in broken["images"] if i["width"] == 0] == ["layers.png"]
    assert len(broken["errors"]) == 1 and "layers.png" in broken["errors"][0]
