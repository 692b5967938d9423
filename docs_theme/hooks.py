"""Build hooks of the docs site: the version and the repository link come from the project.

The version is the package's own (``src/flnotify/_version.py``), so the site never shows a
stale number. The repository link is ``[project.urls] Repository`` of ``pyproject.toml``,
or else the ``origin`` remote of the checkout the site is built from.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent


def project_version() -> str:
    """The version string of ``src/flnotify/_version.py``."""
    text = (ROOT / "src" / "flnotify" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return match[1] if match else "unknown"


def repository_url() -> str | None:
    """Where the source lives: pyproject's ``Repository`` URL, else the git remote."""
    if tomllib is not None:
        urls = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        found = urls.get("project", {}).get("urls", {}).get("Repository")
        if isinstance(found, str) and found:
            return found
    try:
        remote = subprocess.run(
            ["git", "remote", "get-url", "origin"],  # noqa: S607 - git from PATH, fixed args
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if remote.startswith("git@") and ":" in remote:  # git@host:owner/name.git
        host, path = remote.removeprefix("git@").split(":", 1)
        remote = f"https://{host}/{path}"
    return remote.removesuffix(".git") if remote.startswith("https://") else None


def on_config(config: Any) -> Any:
    """Put the version (and the repository link, when known) into the site's config."""
    config["extra"]["version"] = project_version()
    snippets = config["mdx_configs"].get("pymdownx.snippets")
    if snippets is not None:  # includes name files of the repository, from any directory
        snippets["base_path"] = [str(ROOT)]
    url = repository_url()
    if url and not config.get("repo_url"):
        config["repo_url"] = url
        config["repo_name"] = "Repository"
        config["edit_uri"] = ""
    return config


_DIRECTIVE = re.compile(r"^::: (?P<module>[\w.]+)[ \t]*$", re.MULTILINE)


def api_members(modules: list[str]) -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    """Per public module: the names to render there, and the re-exports shown elsewhere.

    A name is rendered in the first module (in page order) whose ``__all__`` exports it, so
    each object has one anchor and cross-references never have two candidates; a later
    module lists its re-exports as links to that anchor instead.
    """
    import importlib

    first: dict[int, str] = {}
    plan: dict[str, tuple[list[str], list[tuple[str, str]]]] = {}
    for name in modules:
        module = importlib.import_module(name)
        rendered: list[str] = []
        elsewhere: list[tuple[str, str]] = []
        for member in module.__all__:
            try:
                value = getattr(module, member)
            except ImportError:  # a pytest-only helper: documented from its source
                rendered.append(member)
                continue
            key = id(value)
            if key in first:
                elsewhere.append((member, first[key]))
            else:
                first[key] = f"{name}.{member}"
                rendered.append(member)
        plan[name] = (rendered, elsewhere)
    return plan


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """On the API page, render each public object once and link its other names to it."""
    if page.file.src_uri != "api.md":
        return markdown
    plan = api_members([m["module"] for m in _DIRECTIVE.finditer(markdown)])

    def directive(match: re.Match[str]) -> str:
        rendered, elsewhere = plan[match["module"]]
        lines = [match[0], "    options:", f"      members: [{', '.join(rendered)}]"]
        if elsewhere:
            links = ", ".join(f"[`{name}`][{target}]" for name, target in elsewhere)
            lines = [f"Also exported here: {links}.", "", *lines]
        return "\n".join(lines)

    return _DIRECTIVE.sub(directive, markdown)
