"""User tokens: short-lived bearer tokens for one app_user_id, signed with itsdangerous.

A token is ``ut2.`` followed by an itsdangerous URL-safe signed payload ``{"sub": app_user_id,
"exp": epoch seconds}`` (salt ``user-token``). ``USER_TOKEN_SECRET`` holds one secret or
several, comma-separated, each at least 16 characters: the first signs, every one is accepted,
so a secret is rotated by putting the new one first and dropping the old one once the tokens
it signed have expired (an hour at most).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from itsdangerous import BadData, URLSafeSerializer

USER_TOKEN_PREFIX = "ut2."
DEFAULT_USER_TOKEN_TTL_S = 900
MIN_USER_TOKEN_TTL_S = 10
MAX_USER_TOKEN_TTL_S = 3600
MIN_SECRET_LENGTH = 16
MAX_TOKEN_LENGTH = 4096
_SALT = "user-token"


class TokenRefused(Exception):
    """A user token that cannot be accepted; ``reason`` is the API's error code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def token_secrets(setting: str) -> tuple[str, ...]:
    """The secrets of ``USER_TOKEN_SECRET``: comma-separated, blanks around them ignored."""
    return tuple(secret.strip() for secret in setting.split(",") if secret.strip())


def is_user_token(token: str) -> bool:
    return token.startswith(USER_TOKEN_PREFIX)


class UserTokens:
    """Mints and verifies user tokens with the secrets of one ``USER_TOKEN_SECRET`` setting."""

    def __init__(self, secrets: Sequence[str]):
        self.secrets = tuple(secrets)
        self.problem: str | None = None
        if not self.secrets:
            self.problem = "USER_TOKEN_SECRET is not set: user tokens are refused"
        elif any(len(s) < MIN_SECRET_LENGTH for s in self.secrets):
            self.problem = f"every USER_TOKEN_SECRET secret must be at least {MIN_SECRET_LENGTH} characters"
        # itsdangerous signs with the last key of the list and tries them all: ours signs with the first.
        self._serializer = URLSafeSerializer(list(reversed(self.secrets)) or [""], salt=_SALT)

    @classmethod
    def from_setting(cls, setting: str) -> UserTokens:
        return cls(token_secrets(setting))

    @property
    def configured(self) -> bool:
        return self.problem is None

    def mint(self, app_user_id: str, *, now_s: int, ttl_s: int = DEFAULT_USER_TOKEN_TTL_S) -> str:
        """A bearer token good for ``app_user_id`` only, until ``now_s + ttl_s``."""
        if self.problem is not None:
            raise ValueError(self.problem)
        return USER_TOKEN_PREFIX + self._serializer.dumps({"sub": app_user_id, "exp": int(now_s) + int(ttl_s)})

    def verify(self, token: str, *, now_s: int) -> str:
        """The app_user_id a valid, unexpired user token was signed for; TokenRefused otherwise."""
        if self.problem is not None:
            raise TokenRefused("user_tokens_not_configured", self.problem)
        if not is_user_token(token) or len(token) > MAX_TOKEN_LENGTH:
            raise TokenRefused("invalid_token", "malformed user token")
        try:
            claims = self._serializer.loads(token[len(USER_TOKEN_PREFIX) :])
            subject, expires = claims["sub"], claims["exp"]
        except (BadData, json.JSONDecodeError, KeyError, TypeError):
            raise TokenRefused("invalid_token", "user token signature does not match or is malformed") from None
        if not isinstance(subject, str) or not subject or not isinstance(expires, int):
            raise TokenRefused("invalid_token", "malformed user token")
        if expires <= now_s:
            raise TokenRefused("token_expired", "user token has expired: mint a new one")
        return subject
