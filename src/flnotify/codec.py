"""The wire format's codec: notifications to and from the bytes of wire format v1.

A [`Notifier`][flnotify.Notifier] and a
[`NotificationRouter`][flnotify.receiving.NotificationRouter] each hold one; code that
encodes or decodes notifications itself uses these. The codec owns a private cattrs
converter (``make_converter``), never the global one, and a
[`NotificationRegistry`][flnotify.codec.NotificationRegistry] of the known types.
"""

from ._codec import Codec, NotificationRegistry, decode, default_registry, encode, make_converter

__all__ = [
    "Codec",
    "NotificationRegistry",
    "decode",
    "default_registry",
    "encode",
    "make_converter",
]
