"""TLS settings of the server's outgoing requests: a client certificate, a private CA.

FL deployments often require mutual TLS between the server and its clients (every site is
provisioned a certificate). [`TLSConfig`][flnotify.transports.TLSConfig] names the files;
its context is built once per distinct value and shared, never per attempt.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable
from typing import TypeAlias

import attrs

from .._exceptions import ConfigurationError

__all__ = ["TLSConfig", "TLSFor", "tls_context"]


@attrs.frozen
class TLSConfig:
    """A client certificate to present and the CAs to trust, for ``https`` endpoints.

    Args:
        certificate: PEM file of the server's client certificate (and its chain); with
            ``key``, presented to receivers that ask for one (mutual TLS).
        key: PEM file of its private key, if not in ``certificate``.
        password: The key's password, if it is encrypted.
        ca_bundle: PEM file of the CAs that sign the receivers' certificates (a private
            CA); only these are trusted then. The system's trust store by default.
    """

    certificate: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None
    password: str | None = attrs.field(default=None, repr=False)
    ca_bundle: str | os.PathLike[str] | None = None

    def __attrs_post_init__(self) -> None:
        if self.key is not None and self.certificate is None:
            msg = "TLSConfig: a key without a certificate"
            raise ConfigurationError(msg)

    def context(self) -> ssl.SSLContext:
        """The ``ssl.SSLContext`` for these settings, built on first use and then shared.

        Raises:
            ConfigurationError: A file is missing or not a certificate, key or CA bundle.
        """
        return _build(self)


TLSFor: TypeAlias = Callable[[str, int], "ssl.SSLContext | TLSConfig | None"]
"""Per-receiver TLS: given an ``https`` endpoint's host and port, its own context or
settings (a site with its own CA or certificate), or ``None`` for the transport's."""


@functools.lru_cache(maxsize=256)
def _build(config: TLSConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            cafile=None if config.ca_bundle is None else os.fspath(config.ca_bundle)
        )
        if config.certificate is not None:
            context.load_cert_chain(
                os.fspath(config.certificate),
                None if config.key is None else os.fspath(config.key),
                config.password,
            )
    except (OSError, ssl.SSLError, ValueError) as exc:
        msg = f"TLS settings {config!r} cannot be loaded: {exc}"
        raise ConfigurationError(msg) from exc
    return context


def tls_context(value: ssl.SSLContext | TLSConfig) -> ssl.SSLContext:
    """A context from what a [`TLSFor`][flnotify.transports.TLSFor] returned."""
    if isinstance(value, TLSConfig):
        return value.context()
    if isinstance(value, ssl.SSLContext):
        return value
    msg = f"expected an ssl.SSLContext or a TLSConfig, not {type(value).__name__}"
    raise TypeError(msg)
