"""``python -m flnotify``: the same as the ``flnotify`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
