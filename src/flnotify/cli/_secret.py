"""``flnotify secret``: a new signing secret, for the server and its clients alike."""

from __future__ import annotations

import argparse

from .. import generate_secret
from ..errors import ConfigurationError
from ._output import emit

__all__ = ["run_secret"]


def run_secret(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print one new ``whsec_`` secret (Standard Webhooks format) on stdout."""
    try:
        secret = generate_secret(args.bytes)
    except ConfigurationError as exc:  # too few bytes: the message every secret check gives
        parser.error(f"argument --bytes: {exc}")
    emit(secret)
    return 0
