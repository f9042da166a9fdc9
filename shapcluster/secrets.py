"""Secrets the process has seen (tokens, AWS keys), so every output path can mask them.

Kept free of rich so the core can register a secret the moment it learns it; console.py and
the logging filter mask with ``mask_secrets``.
"""

from __future__ import annotations

import threading

MASK = "****"
_MIN_LENGTH = 4  # shorter values would mask ordinary words
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Remember a secret so that any later output or log line shows it masked."""
    if len(value) >= _MIN_LENGTH:
        with _lock:
            _secrets.add(value)


def mask_secrets(text: str) -> str:
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return text
