"""Observing deliveries: hooks the engine calls for every send, attempt and outcome.

Pass hooks as ``Notifier(hooks=[...])`` (any driver: the settings' ``hooks``). Subclass
[`NullHook`][flnotify.hooks.NullHook] and override what you need; a hook that also adds
headers to each attempt (a trace context) has the optional
[`HeaderHook`][flnotify.hooks.HeaderHook] method. ``flnotify.contrib.opentelemetry`` is one.
"""

from ._hooks import AttemptEnded, AttemptStarted, DeliveryHook, HeaderHook, NullHook, SendStarted

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "DeliveryHook",
    "HeaderHook",
    "NullHook",
    "SendStarted",
]
