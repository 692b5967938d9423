"""The ``flnotify`` command: ``demo``, ``send``, ``secret``, ``listen``, ``outbox``, ``mailbox``.

* ``flnotify demo`` runs a whole training against FL clients on loopback and shows what
  happened to every notification.
* ``flnotify send TYPE URL...`` sends one notification, with a live progress line on a
  terminal, and prints the delivery report; the exit status is 1 when a receiver did not
  answer 2xx.
* ``flnotify secret`` prints a new ``whsec_`` signing secret.
* ``flnotify listen`` is an FL client that prints every verified notification.
* ``flnotify outbox`` shows and re-drives the durable outbox.
* ``flnotify mailbox serve`` serves a mailbox to polling clients (``listen --pull``).

Usage errors exit with status 2. Colour is used on a terminal only, never when
``NO_COLOR`` is set; ``rich`` (the ``cli`` extra) gives ``demo`` a live progress display.
"""

from __future__ import annotations

from ._args import SECRET_ENV
from ._main import main

__all__ = ["SECRET_ENV", "main"]
