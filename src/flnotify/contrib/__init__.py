"""Integrations with other frameworks; each submodule needs its own extra installed.

* [`flnotify.contrib.celery`][] — deliver on Celery workers (``flnotify[celery]``).

Importing this package imports none of them.
"""

__all__: list[str] = []
