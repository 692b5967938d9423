"""The code in the docs runs: every ```python block of docs/*.md and README.md, and the site builds.

Each page's blocks run in order in one namespace (so a page can build on its earlier
blocks), with ``__name__`` set to ``"docs"`` (``if __name__ == "__main__":`` parts do not
run), in a temporary working directory, with ``FL_WEBHOOK_SECRET`` and ``FLNOTIFY_SECRET``
set to fresh secrets. A block right after the comment ``<!-- no-test -->`` is skipped; other
fences (```py, ```text, ```json) are not Python blocks and are never run.

Backoff waits of a ``flnotify.Notifier`` are 20 times shorter while docs run, so a page may
show the default retry policy against a closed loopback port without the tests waiting
seconds for it; what is retried, and how often, is unchanged.

Blocks must only contact 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import flnotify
from flnotify.signing import generate_secret

ROOT = Path(__file__).resolve().parent.parent
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
        kwargs.setdefault("sleep", _scaled_sleep)
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


def test_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: every nav page exists, links resolve, docstrings render."""
    for package in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(package.split(".")[0]) is None:
            pytest.skip(f"{package} is not installed (the docs extra)")
    result = subprocess.run(  # noqa: S603 - a fixed command
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "api" / "index.html").is_file()
