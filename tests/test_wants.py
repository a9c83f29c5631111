"""Market-data demand: wanted conids, the limit, idle expiry, change events."""

from __future__ import annotations

import pytest
import trio

from bezant_trio.wants import TooManyConids, Wants


async def test_want_limits_and_idle_expiry(autojump_clock: object) -> None:
    wants = Wants(2, clock=trio.current_time)
    changed = wants.changed
    assert wants.want(1) is True
    assert changed.is_set()
    assert wants.want(1) is False
    wants.want(2)
    with pytest.raises(
        TooManyConids, match=r"already 2 market-data conids wanted \(max_conids=2\)"
    ):
        wants.want(3)
    assert wants.wanted() == [1, 2]  # the refused conid was not recorded
    await trio.sleep(200)
    wants.want(2)  # polled again: stays
    await trio.sleep(150)
    changed = wants.changed
    assert wants.expire_idle(300) == [1]
    assert changed.is_set()
    assert wants.wanted() == [2] and 2 in wants and len(wants) == 1


def test_the_message_names_the_setting_to_raise() -> None:
    wants = Wants(1, what="bars", setting="events.bars.max_conids")
    wants.want(7)
    with pytest.raises(TooManyConids) as caught:
        wants.want(8)
    assert "raise events.bars.max_conids" in str(caught.value)
