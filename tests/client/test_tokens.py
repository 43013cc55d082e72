"""User tokens (web/tokens.py, itsdangerous): one user, an expiry, several secrets for rotation."""

from __future__ import annotations

import pytest

from web.tokens import TokenRefused, UserTokens, token_secrets

NEW, OLD = "n" * 32, "o" * 32


def test_user_tokens_carry_one_user_and_expire():
    tokens = UserTokens([NEW])
    token = tokens.mint("alice", now_s=1000, ttl_s=60)
    assert token.startswith("ut2.")
    assert tokens.verify(token, now_s=1059) == "alice"
    with pytest.raises(TokenRefused) as expired:
        tokens.verify(token, now_s=1060)
    assert expired.value.reason == "token_expired"
    with pytest.raises(TokenRefused) as wrong_secret:
        UserTokens([OLD]).verify(token, now_s=1000)
    assert wrong_secret.value.reason == "invalid_token"
    with pytest.raises(TokenRefused) as unset:
        UserTokens([]).verify(token, now_s=1000)
    assert unset.value.reason == "user_tokens_not_configured"


def test_the_first_secret_signs_and_every_secret_is_accepted():
    assert token_secrets(f" {NEW} ,{OLD},, ") == (NEW, OLD)
    rotating = UserTokens.from_setting(f"{NEW},{OLD}")
    signed_before = UserTokens([OLD]).mint("alice", now_s=0, ttl_s=60)
    assert rotating.verify(signed_before, now_s=1) == "alice"  # tokens of the old secret still work
    signed_now = rotating.mint("bob", now_s=0, ttl_s=60)
    assert UserTokens([NEW]).verify(signed_now, now_s=1) == "bob"  # signed with the first
    with pytest.raises(TokenRefused):
        UserTokens([OLD]).verify(signed_now, now_s=1)


def test_a_tampered_user_token_is_refused():
    tokens = UserTokens([NEW])
    token = tokens.mint("alice", now_s=1000, ttl_s=60)
    other = tokens.mint("mallory", now_s=1000, ttl_s=60)
    forged = other.rsplit(".", 1)[0] + "." + token.rsplit(".", 1)[1]  # mallory's claims, alice's signature
    hand_rolled_v1 = "ut1.eyJzdWIiOiJhbGljZSJ9.sig"
    for bad in (forged, token + "x", "ut2.", "ut2.abc", "ut2..sig", token.replace("ut2.", "ut3."), hand_rolled_v1):
        with pytest.raises(TokenRefused):
            tokens.verify(bad, now_s=1000)
    with pytest.raises(TokenRefused):
        tokens.verify("ut2." + "a" * 5000, now_s=1000)


def test_short_secrets_are_refused_whole():
    tokens = UserTokens.from_setting(f"{NEW},short")
    assert not tokens.configured and "16" in (tokens.problem or "")
    with pytest.raises(ValueError):
        tokens.mint("alice", now_s=0)
