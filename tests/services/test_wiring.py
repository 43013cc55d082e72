"""One Wiring per process and settings, until it is closed."""

from __future__ import annotations

from services.wiring import wiring_for


def test_a_closed_wiring_is_never_handed_out_again(settings):
    # a distinct settings object: the session's own wiring is left alone
    mine = settings.with_(provider_fetch_concurrency=settings.provider_fetch_concurrency + 1)
    first = wiring_for(mine)
    assert wiring_for(mine) is first
    assert first.fetch_pool.submit(lambda: 1).result() == 1
    first.close()
    second = wiring_for(mine)
    try:
        assert second is not first
        assert second.fetch_pool.submit(lambda: 2).result() == 2  # first's pool is shut
    finally:
        second.close()
