"""TLS settings of the server's outgoing requests: a client certificate, a private CA.

FL deployments often require mutual TLS between the server and its clients (every site is
provisioned a certificate). [`TLSConfig`][flnotify.transports.TLSConfig] names the files;
its context is built once per distinct value and shared, never per attempt.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
from collections.abc import Callable
from typing import Final, TypeAlias

import attrs

from .._exceptions import ConfigurationError

__all__ = ["TLSConfig", "TLSFor", "refused_handshake", "tls_context"]

# OpenSSL names an alert it received SSLV3_ALERT_..., TLSV1_ALERT_... or TLSV13_ALERT_...
_ALERT: Final = re.compile(r"(?:SSLV3|TLSV1|TLSV13)_ALERT_([A-Z_]+)")

# Alerts by which a server refuses the certificate a client presented (RFC 8446, 6.2).
_CERTIFICATE_REFUSED: Final = frozenset(
    {
        "access denied",
        "bad certificate",
        "certificate expired",
        "certificate revoked",
        "certificate unknown",
        "decrypt error",
        "unknown ca",
        "unsupported certificate",
    }
)


def refused_handshake(exc: BaseException | None, where: str, *, after: bool = False) -> str:
    """What a server that refused our TLS handshake said, as a sentence for the error.

    Under TLS 1.3 a server checks the client certificate after the client's side of the
    handshake is done, so its alert (or its closing) comes with the first read; under
    TLS 1.2 during the handshake. Servers on asyncio (uvicorn, uvloop) close without any
    alert.

    Args:
        exc: What the refusal raised: an ``ssl.SSLError`` naming a received alert, or
            ``None`` (or a reset) when the server closed without one.
        where: The server, e.g. ``"127.0.0.1:8443"``, or ``""``.
        after: The connection closed after our side of the handshake, before any response.
    """
    by = f" by {where}" if where else ""
    reason = (getattr(exc, "reason", None) or str(exc)) if isinstance(exc, ssl.SSLError) else ""
    match = _ALERT.search(reason)
    if match is None:
        if after:
            return (
                f"the TLS handshake was refused{by}: the server closed the connection right"
                " after it, before any response and without a TLS alert (most likely it"
                " refused our client certificate)"
            )
        return (
            f"the TLS handshake was refused{by}: the server closed the connection without"
            " a TLS alert (does it require a client certificate?)"
        )
    alert = match.group(1).lower().replace("_", " ")
    if alert == "certificate required":
        what = "the server requires a client certificate and we sent none"
    elif alert in _CERTIFICATE_REFUSED:
        what = "the server refused our client certificate"
    else:
        what = "the server refused it"
    return f"the TLS handshake was refused{by}: {what} (TLS alert {alert})"


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
