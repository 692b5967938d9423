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


_DIRECTIVE = re.compile(r"^::: (?P<module>[\w.]+)(?::[ \t]*(?P<names>.*?))?[ \t]*$", re.MULTILINE)
"""``::: module`` renders a module's docstring; ``::: module: A, B`` renders those names."""


def api_plan(markdown: str) -> dict[str, str]:
    """Public name ("flnotify.receiving.Reply") -> the anchor it is rendered under.

    The API page lists names in groups (``::: module: A, B``), in the order users reach
    for them. Every name of a listed module's ``__all__`` must be in one group, and no
    other: a name missing from the page, or listed twice, fails the build. An object
    exported under two names is rendered at the first and linked from the second.

    Raises:
        ValueError: A name of ``__all__`` is in no group, in two, or not in ``__all__``.
    """
    import importlib

    first: dict[int, str] = {}
    placement: dict[str, str] = {}
    modules: dict[str, list[str]] = {}
    problems: list[str] = []
    for match in _DIRECTIVE.finditer(markdown):
        module = match["module"]
        names = [n.strip() for n in (match["names"] or "").split(",") if n.strip()]
        exported = importlib.import_module(module).__all__
        listed = modules.setdefault(module, [])
        for name in names:
            public = f"{module}.{name}"
            if name not in exported:
                problems.append(f"{public} is not in {module}.__all__")
            if name in listed:
                problems.append(f"{public} is listed twice")
            listed.append(name)
            try:
                key = id(getattr(importlib.import_module(module), name))
            except ImportError:  # a pytest-only helper: documented from its source
                key = id(public)
            placement[public] = first.setdefault(key, public)
    for module, listed in modules.items():
        exported = importlib.import_module(module).__all__
        missing = [name for name in exported if name not in listed]
        if missing:
            problems.append(f"{module}: not on the API page: {', '.join(missing)}")
    if problems:
        raise ValueError("docs/api.md: " + "; ".join(problems))
    return placement


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """On the API page, render each listed object once and link its other names to it."""
    if page.file.src_uri != "api.md":
        return markdown
    placement = api_plan(markdown)

    def directive(match: re.Match[str]) -> str:
        module = match["module"]
        if match["names"] is None:  # the module's docstring only
            return f"::: {module}\n    options:\n      members: false\n"
        parts: list[str] = []
        aliases: list[str] = []
        for name in (n.strip() for n in match["names"].split(",")):
            if not name:
                continue
            public = f"{module}.{name}"
            target = placement[public]
            if target != public:
                aliases.append(f"[`{public}`][{target}] is [`{target}`][{target}]")
                continue
            parts.append(
                f"::: {public}\n    options:\n      show_root_heading: true\n"
                "      show_root_full_path: true\n"
            )
        if aliases:
            parts.insert(0, "Also exported: " + "; ".join(aliases) + ".\n")
        return "\n".join(parts)

    return _DIRECTIVE.sub(directive, markdown)
