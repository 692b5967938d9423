"""The code in the docs runs (every ```python block of docs/*.md and README.md); the site is right.

Each page's blocks run in order in one namespace (so a page can build on its earlier
blocks), with ``__name__`` set to ``"docs"`` (``if __name__ == "__main__":`` parts do not
run), in a temporary working directory, with ``FL_WEBHOOK_SECRET`` and ``FLNOTIFY_SECRET``
set to fresh secrets. A block right after the comment ``<!-- no-test -->`` is skipped; other
fences (```py, ```text, ```json) are not Python blocks and are never run.

Backoff waits of a ``flnotify.Notifier`` are 20 times shorter while docs run, so a page may
show the default retry policy against a closed loopback port without the tests waiting
seconds for it; what is retried, and how often, is unchanged.

Blocks must only contact 127.0.0.1.

The site is built once (``mkdocs build --strict``, and again with ProperDocs) and its HTML
is scanned: no Sphinx role, snippet marker, unresolved cross-reference or outside document
left as text, local links that work from disk, every public name on the API page with its
parameters' types and defaults, the API page as headless chromium shows it, and no table or
code block wider than its column on any page at 1280 px. Under
``CI`` a missing docs tool or browser fails these tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import html
import html.parser
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import flnotify
from flnotify import generate_secret
from flnotify.testing import seams

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]

NO_TEST = "<!-- no-test -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_SNIPPET = re.compile(r"^\s*-{2}8<-{2}\s+\"(?P<path>[^\"]+)\"\s*$")


@attrs.frozen
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    skipped: bool

    @property
    def location(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    """The fenced blocks of a Markdown page."""
    return parse(page.read_text(encoding="utf-8"), page)


def parse(text: str, page: Path) -> Iterator[Block]:
    """The fenced blocks of Markdown ``text``, their indentation removed."""
    lines = text.splitlines()
    previous = ""  # the last non-blank line before the current one
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip().split()
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            text = lines[end]
            if text.strip().startswith(fence) and not text.strip().strip(fence[0]):
                break
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            end += 1
        yield Block(
            page=page,
            line=index + 1,
            language=info[0].lower() if info else "",
            source="\n".join(body) + "\n",
            skipped=previous == NO_TEST,
        )
        previous = ""
        index = end + 1


def python_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.language == "python"]


def snippet_paths(block: Block) -> list[str]:
    return [m["path"] for line in block.source.splitlines() if (m := _SNIPPET.match(line))]


# --------------------------------------------------------------------------- the harness


def test_block_parser() -> None:
    text = (
        "# T\n\n```python\na = 1\n```\n\n<!-- no-test -->\n\n```python\nboom()\n```\n"
        "\n- item\n\n    ```python\n    b = a + 1\n    ```\n\n```py\nnot_python()\n```\n"
        "````markdown\n```python\ninner()\n```\n````\n"
    )
    found = list(parse(text, ROOT / "example.md"))
    assert [(b.language, b.source, b.skipped) for b in found] == [
        ("python", "a = 1\n", False),
        ("python", "boom()\n", True),
        ("python", "b = a + 1\n", False),
        ("py", "not_python()\n", False),
        ("markdown", "```python\ninner()\n```\n", False),
    ]


def _scaled_sleep(seconds: float) -> Any:
    return asyncio.sleep(seconds / 20)


class _QuickBackoffNotifier(flnotify.Notifier):
    """A Notifier whose backoff waits are 20 times shorter, unless a sleep is given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with seams(sleep=_scaled_sleep):
            super().__init__(*args, **kwargs)


def runnable(page: Path) -> list[Block]:
    return [b for b in python_blocks(page) if not b.skipped]


@pytest.mark.parametrize(
    "page", [p for p in PAGES if runnable(p)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_python_blocks_run(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FL_WEBHOOK_SECRET", generate_secret())
    monkeypatch.setenv("FLNOTIFY_SECRET", generate_secret())
    monkeypatch.setattr(flnotify, "Notifier", _QuickBackoffNotifier)
    namespace: dict[str, Any] = {"__name__": "docs"}
    for block in runnable(page):
        assert not snippet_paths(block), f"{block.location}: an included file cannot run here"
        code = compile(block.source, block.location, "exec")
        try:
            exec(code, namespace)  # noqa: S102 - running the docs is the point
        except BaseException as exc:
            output = capsys.readouterr()
            msg = f"{block.location}: {type(exc).__name__}: {exc}\n{output.out}{output.err}"
            raise AssertionError(msg) from exc


def test_included_files_exist() -> None:
    """``--8<-- "path"`` includes (pymdownx.snippets) name files of this repository."""
    for page in PAGES:
        for block in blocks(page):
            for path in snippet_paths(block):
                assert (ROOT / path).is_file(), f"{block.location}: {path} does not exist"


def test_pages_have_python_blocks() -> None:
    """The pages written for the docs site show runnable code (a guard against fence typos)."""
    for name in ("index.md", "quickstart-server.md", "repository.md", "callbacks.md"):
        assert runnable(DOCS / name), name


# --------------------------------------------------------------------------- the site


def _missing_or_fail(reason: str) -> None:
    """Skip locally; in CI (``CI`` set) a skipped docs check is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs every docs check)")
    pytest.skip(reason)


def _build(command: list[str], site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - a fixed command
        [*command, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once with ``mkdocs build --strict``."""
    for package in ("mkdocs", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(package.split(".")[0]) is None:
            _missing_or_fail(f"{package} is not installed (the docs extra)")
    built = tmp_path_factory.mktemp("site")
    result = _build([sys.executable, "-m", "mkdocs"], built)
    assert result.returncode == 0, result.stdout + result.stderr
    return built


def test_site_builds_strict(site: Path) -> None:
    """``mkdocs build --strict``: every nav page exists, links resolve, docstrings render."""
    assert (site / "index.html").is_file()
    assert (site / "api.html").is_file()  # pages are files: the site works from disk


def test_site_builds_with_properdocs(tmp_path: Path) -> None:
    """The same mkdocs.yml builds with ProperDocs, the maintained continuation of MkDocs 1.x."""
    if importlib.util.find_spec("properdocs") is None:
        _missing_or_fail("properdocs is not installed (the docs extra)")
    result = _build([sys.executable, "-m", "properdocs", "-q"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "api.html").is_file()


# --------------------------------------------------------------------------- the built HTML


class _Text(html.parser.HTMLParser):
    """The text of an HTML page (scripts and styles left out), and its links and ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if values.get("id"):
            self.ids.add(str(values["id"]))
        for name in ("href", "src"):
            if tag != "link" and values.get(name):
                self.links.append(str(values[name]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    @property
    def text(self) -> str:
        """The text, one space where there was any white space or a tag boundary."""
        return " ".join(" ".join(self.parts).split())

    @property
    def inline_text(self) -> str:
        """The text as an inline fragment reads: tags join without a space."""
        text = " ".join("".join(self.parts).split())
        return re.sub(r"\s+(?=[)\],])|(?<=[(\[])\s+", "", text)


def _read(page: Path) -> _Text:
    parsed = _Text()
    parsed.feed(page.read_text(encoding="utf-8"))
    return parsed


def _pages(site: Path) -> list[Path]:
    return [p for p in sorted(site.rglob("*.html")) if p.name != "404.html"]


_LEFTOVERS = {
    "a Sphinx role": re.compile(
        r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):\s*`?[~\w]"
    ),
    "a snippet marker": re.compile(r"-{1,2}8\s*<\s*-{1,2}"),
    "an unresolved cross-reference": re.compile(r"\[`?[\w.]+`?\]\[[\w.]*\]"),
    "a document outside the repository": re.compile(r"DESIGN\s*§|DESIGN\.md|STYLE\.md"),
}


def test_html_has_no_leftover_markup(site: Path) -> None:
    """No raw roles, snippet markers, unresolved references or outside documents on any page."""
    problems = []
    for page in _pages(site):
        text = _read(page).text
        for what, pattern in _LEFTOVERS.items():
            for match in pattern.finditer(text):
                around = text[max(0, match.start() - 40) : match.end() + 40]
                problems.append(f"{page.relative_to(site)}: {what}: ...{around}...")
    assert not problems, "\n".join(problems)


def test_html_links_work_from_disk(site: Path) -> None:
    """Every local link names a file of the site (and an id on it), so file:// works."""
    ids = {page: _read(page).ids for page in site.rglob("*.html")}
    broken = []
    for page in _pages(site):
        for link in _read(page).links:
            if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith("//"):
                assert not link.startswith("http://"), f"{page.name}: plain-http link {link}"
                continue  # outside links (https, mailto) are the reader's to follow
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if target.is_dir() or not target.exists():
                broken.append(f"{page.relative_to(site)}: {link}")
            elif anchor and target.suffix == ".html" and anchor not in ids[target]:
                broken.append(f"{page.relative_to(site)}: {link} (no such id)")
    assert not broken, "\n".join(broken)


def test_site_shows_version(site: Path) -> None:
    text = _read(site / "index.html").text
    assert flnotify.__version__ in text


def _section(page: str, anchor: str) -> str:
    """The HTML of one object's documentation, up to the next heading of an object."""
    start = page.index(f'id="{anchor}"')
    end = page.find('class="doc doc-heading"', page.index("</h", start))
    return page[start : end if end != -1 else None]


_ENTRY = re.compile(r"<li>\s*<b><code>(?P<name>[^<]+)</code></b>(?P<rest>.*?)</li>", re.DOTALL)


def _parameters(section: str) -> dict[str, str]:
    """Name -> the text after it ("(type, default: value) - description")."""
    found = {}
    for match in _ENTRY.finditer(section):
        parsed = _Text()
        parsed.feed(match["rest"])
        found[match["name"]] = parsed.inline_text
    return found


def _api_placement() -> dict[str, str]:
    """Public name ("flnotify.transports.HttpResponse") -> the anchor it is rendered under."""
    sys.path.insert(0, str(ROOT / "docs_theme"))
    try:
        hooks = importlib.import_module("hooks")
    finally:
        sys.path.remove(str(ROOT / "docs_theme"))
    placement: dict[str, str] = hooks.api_plan((DOCS / "api.md").read_text(encoding="utf-8"))
    return placement


def test_api_reaches_every_public_name(site: Path) -> None:
    ids = _read(site / "api.html").ids
    placement = _api_placement()
    assert "flnotify.Notifier" in placement
    missing = [name for name, anchor in placement.items() if anchor not in ids]
    assert not missing, f"not on the API page: {missing}"
    private = sorted(i for i in ids if re.search(r"(^|\.)_[A-Za-z]", i))
    assert not private, f"private objects shown: {private}"
    text = _read(site / "api.html").text
    bases = sorted(set(re.findall(r"\b_[A-Z][a-z]\w*|\bAsyncClosing\b|\bClosing\b", text)))
    assert not bases, f"private classes named on the API page: {bases}"


def test_api_never_calls_a_defaulted_parameter_required(site: Path) -> None:
    """Each listed parameter with a default shows it, and "required" only where there is none."""
    page = (site / "api.html").read_text(encoding="utf-8")
    wrong = []
    for public, anchor in _api_placement().items():
        module, _, name = public.rpartition(".")
        obj = getattr(importlib.import_module(module), name)
        if public != anchor or not callable(obj):
            continue
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        shown = _parameters(_section(page, anchor).split('class="doc doc-children"')[0])
        for parameter in signature.parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue  # **options: the fields of another class, listed there
            text = shown.get(parameter.name)
            if text is None:
                continue
            has_default = parameter.default is not inspect.Parameter.empty
            head = text.split(" \N{EN DASH} ")[0]  # "(type, default: value)", no description
            if has_default and ("default:" not in head or "required" in head):
                wrong.append(f"{public}({parameter.name}): {text[:80]}")
            if not has_default and "default:" in text:
                wrong.append(f"{public}({parameter.name}) has no default: {text[:80]}")
    assert not wrong, "\n".join(wrong)


def test_api_shows_types_and_defaults_of_the_main_classes(site: Path) -> None:
    page = (site / "api.html").read_text(encoding="utf-8")
    notifier = _parameters(_section(page, "flnotify.Notifier"))
    named = [p for p in inspect.signature(flnotify.Notifier).parameters if p != "options"]
    assert [p for p in notifier if p.lstrip("*") != "options"] == named, "in order"
    assert "**options" in notifier
    assert notifier["settings"].startswith("(Settings | None, default: None)")
    settings = _parameters(_section(page, "flnotify.Settings"))
    fields = [f.alias for f in attrs.fields(flnotify.Settings) if f.init]
    assert list(settings) == fields, "every Settings field, in order"
    assert settings["concurrency"].startswith("(int, default: 100)")
    assert settings["retry"].startswith("(RetryPolicy, default: RetryPolicy())")
    assert settings["deadline"].startswith("(float | None, default: 90.0)")
    retry = _parameters(_section(page, "flnotify.RetryPolicy"))
    for field in attrs.fields(flnotify.RetryPolicy):
        if field.name != "classification":
            assert f"default: {field.default!r}" in retry[field.name]
    assert retry["classification"].startswith("(Classification, default: Classification())")
    body = _parameters(_section(page, "flnotify.RoundBody"))
    assert body["round"].startswith("(int)")
    assert body["global_model_uuid"].startswith("(UUID)")


# --------------------------------------------------------------------------- in a browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    _missing_or_fail("chromium is not installed (the README's test command installs it)")
    raise AssertionError  # unreachable: _missing_or_fail raises


def test_api_page_in_a_headless_browser(site: Path, tmp_path: Path) -> None:
    """Debian's chromium opens the built page from disk and shows Notifier's parameters."""
    browser = _chromium()
    result = subprocess.run(  # noqa: S603 - a fixed command on a local file
        [
            browser,
            "--headless",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",  # small /dev/shm in containers
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            (site / "api.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "</html>" in dom
    notifier = _parameters(_section(dom, "flnotify.Notifier"))
    assert notifier["transport"].startswith("(AsyncTransport | Transport | None, default:")
    settings = _parameters(_section(dom, "flnotify.Settings"))
    assert settings["concurrency"].startswith("(int, default: 100)")
    assert settings["retry"].startswith("(RetryPolicy, default: RetryPolicy())")
    text = _Text()
    text.feed(dom)
    assert flnotify.__version__ in text.text


_MEASURE = """
window.addEventListener("load", () => {
  const found = {pages: 0, checked: 0, overflows: []};
  for (const frame of document.querySelectorAll("iframe")) {
    const name = frame.getAttribute("src");
    const main = frame.contentDocument && frame.contentDocument.querySelector('[role="main"]');
    if (!main) { found.overflows.push(name + ": no content column"); continue; }
    found.pages += 1;
    const right = main.getBoundingClientRect().right;
    for (const element of main.querySelectorAll("table, pre, pre code")) {
      found.checked += 1;
      const box = element.getBoundingClientRect();
      if (element.scrollWidth > element.clientWidth + 1 || box.right > right + 1) {
        const room = Math.round(Math.min(element.clientWidth, right - box.left));
        const text = element.textContent.trim().slice(0, 60);
        found.overflows.push(`${name}: ${element.tagName.toLowerCase()} of ` +
          `${element.scrollWidth} px in ${room} px: ${text}`);
      }
    }
  }
  document.getElementById("report").textContent = JSON.stringify(found);
});
"""


def test_no_table_or_code_overflows_its_column_at_1280px(site: Path, tmp_path: Path) -> None:
    """Every page in a 1280 px wide window: tables and code blocks fit the content column.

    A probe page holds every page of (a copy of) the site in a 1280 px wide frame and, once
    they have loaded, measures each table and code block: its content may not be wider than
    its box (a scroll bar, or text cut off), nor its box run past the column's right edge.
    """
    browser = _chromium()
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    pages = [page.name for page in _pages(copy) if page.parent == copy]
    frames = "".join(
        f'<iframe src="{name}" style="display:block;width:1280px;height:600px"></iframe>'
        for name in pages
    )
    probe = copy / "overflow-probe.html"
    probe.write_text(
        f'<!doctype html><html><body><pre id="report"></pre>{frames}'
        f"<script>{_MEASURE}</script></body></html>",
        encoding="utf-8",
    )
    result = subprocess.run(  # noqa: S603 - a fixed command on a local file
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--allow-file-access-from-files",  # the probe reads its frames' documents
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1300,900",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = re.search(r'<pre id="report">(.*?)</pre>', result.stdout, re.DOTALL)
    assert report is not None, result.stdout[-2000:]
    found = json.loads(html.unescape(report[1]))
    assert found["pages"] == len(pages)
    assert found["checked"] > 100, "the probe measured the pages' tables and code"
    assert not found["overflows"], "\n".join(found["overflows"])
