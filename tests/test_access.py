"""API keys and rate-limit arithmetic, with a fake clock (the HTTP side is in test_hardening)."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

import vlmserve.api.access as access
from vlmserve.api.access import ANONYMOUS, KeyChecker, RateLimiter, load_api_keys
from vlmserve.api.errors import AuthenticationError, RateLimitError
from vlmserve.config import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_come_from_the_setting_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("# team keys\nsk-file-1\n\n  sk-file-2  \nsk-a\n")
    settings = Settings(api_keys=" sk-a, sk-b ,", api_keys_file=file)
    assert load_api_keys(settings) == ["sk-a", "sk-b", "sk-file-1", "sk-file-2"]


def test_callers_are_named_by_position_never_by_key() -> None:
    checker = KeyChecker(["sk-a", "sk-b"])
    assert checker.caller("sk-b") == "key-1"
    for token in (None, "", "sk-", "sk-a ", "sk-c"):
        with pytest.raises(AuthenticationError):
            checker.caller(token)
    assert KeyChecker([]).caller(None) == ANONYMOUS


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", compare)
    KeyChecker(["sk-a", "sk-b", "sk-c"]).caller("sk-a")
    assert len(calls) == 3  # every key is compared, the match first or not


def test_requests_per_minute_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(3, None, clock)
    for _ in range(3):
        limiter.admit("key-0")
    with pytest.raises(RateLimitError) as err:
        limiter.admit("key-0")
    assert err.value.headers() == {"Retry-After": "20"}
    limiter.admit("key-1")  # another key has its own budget
    clock.now += 20
    limiter.admit("key-0")


def test_tokens_per_minute_are_charged_when_the_request_ends() -> None:
    clock = Clock()
    limiter = RateLimiter(None, 600, clock)
    limiter.admit("key-0")
    limiter.charge("key-0", 900)  # 300 over: 30 s of refill before the level is back above 0
    with pytest.raises(RateLimitError) as err:
        limiter.admit("key-0")
    assert err.value.status_code == 429
    assert err.value.headers() == {"Retry-After": "31"}
    clock.now += 31
    limiter.admit("key-0")


def test_a_refused_request_does_not_use_the_request_budget() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 100, clock)
    limiter.admit("k")
    limiter.charge("k", 1000)
    for _ in range(3):
        with pytest.raises(RateLimitError):
            limiter.admit("k")
    clock.now += 60 * 10
    limiter.admit("k")
    limiter.admit("k")
