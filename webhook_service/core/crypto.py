"""Encryption of secrets at rest (tokens, verifiers, subscriber secrets).

Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) with ``MultiFernet`` so ``SECRET_KEY`` can
hold several comma-separated keys: the first encrypts, all decrypt. That is how the key is rotated
without downtime (add the new key first, run ``webhook-service rotate-secret-key``, drop the old).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from itsdangerous import URLSafeTimedSerializer


class SecretKeyError(RuntimeError):
    """The service has no usable encryption key; it must not start."""


DECRYPTED_KEPT = 4096


class SecretBox:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SecretKeyError("SECRET_KEY holds no key")
        self._signing_key = keys[0].strip()
        self._plain: dict[str, str] = {}
        try:
            self._fernet = MultiFernet([Fernet(key.strip().encode()) for key in keys])
        except (ValueError, TypeError) as exc:
            raise SecretKeyError(
                "SECRET_KEY must be one or more comma-separated Fernet keys "
                "(generate one with `webhook-service generate-secret-key`)"
            ) from exc

    @property
    def signing_key(self) -> str:
        """Key material for signed, expiring values (OAuth state); used with a purpose salt."""
        return self._signing_key

    def serializer(self, purpose: str) -> URLSafeTimedSerializer:
        """Signs values for ``purpose`` (the OAuth state, the console's session): a value signed
        for one purpose is refused for another."""
        return URLSafeTimedSerializer(self._signing_key, salt=f"webhook-service/{purpose}")

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """The plaintext; remembered (a few thousand at most), since the same few secrets are read
        on every event: a callback's verifier for each webhook, a tenant's access token for each
        fetch, a subscription's secret for each delivery. A Fernet decryption checks an HMAC and
        runs AES: tens of microseconds each time, a measurable share of an event's cost."""
        plaintext = self._plain.get(ciphertext)
        if plaintext is not None:
            return plaintext
        try:
            plaintext = self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with SECRET_KEY (wrong or rotated-out key)"
            ) from exc
        if len(self._plain) >= DECRYPTED_KEPT:
            self._plain.clear()
        self._plain[ciphertext] = plaintext
        return plaintext

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt under the first key."""
        return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def dev_key(path: Path) -> str:
    """A per-checkout development key, created once so restarts can still read the database."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key
