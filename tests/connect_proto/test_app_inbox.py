"""AppInbox: the bounded FIFO between the HTTP server and one app (no sockets)."""

from __future__ import annotations

import trio
import trio.testing

from connect_proto._server.task_group import AppInbox


def body(n: int) -> dict[str, object]:
    return {"type": "http.request", "body": bytes([n]), "more_body": True}


async def test_puts_and_takes_that_need_not_wait_do_not_yield() -> None:
    inbox = AppInbox(3)
    with trio.testing.assert_no_checkpoints():
        for n in range(3):
            await inbox.put(body(n))
        taken = [await inbox.take() for _ in range(3)]
    assert taken == [body(0), body(1), body(2)]


async def test_a_waiting_taker_is_handed_the_next_event() -> None:
    inbox = AppInbox(3)
    got: list[object] = []

    async def taker() -> None:
        got.append(await inbox.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(taker)
        nursery.start_soon(taker)
        await trio.testing.wait_all_tasks_blocked()
        await inbox.put(body(1))
        await inbox.put(body(2))
    assert sorted(got, key=repr) == [body(1), body(2)]
    with trio.testing.assert_no_checkpoints():
        await inbox.put(body(3))  # nothing was left queued: room for the limit again
        await inbox.put(body(4))
        await inbox.put(body(5))


async def test_a_put_into_a_full_inbox_waits_for_room_in_order() -> None:
    inbox = AppInbox(1)
    await inbox.put(body(0))
    finished: list[int] = []

    async def putter(n: int) -> None:
        await inbox.put(body(n))
        finished.append(n)

    async with trio.open_nursery() as nursery:
        for n in (1, 2):
            nursery.start_soon(putter, n)
            await trio.testing.wait_all_tasks_blocked()
        assert finished == []
        assert await inbox.take() == body(0)
        await trio.testing.wait_all_tasks_blocked()
        assert finished == [1]  # the take made room: the oldest put went in, the other waits
        assert [await inbox.take(), await inbox.take()] == [body(1), body(2)]
    assert finished == [1, 2]


async def test_a_zero_size_inbox_hands_each_put_to_a_taker() -> None:
    inbox = AppInbox(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inbox.put, body(7))
        await trio.testing.wait_all_tasks_blocked()
        assert await inbox.take() == body(7)
        for n in (8, 9):
            nursery.start_soon(inbox.put, body(n))
            await trio.testing.wait_all_tasks_blocked()
        assert [await inbox.take(), await inbox.take()] == [body(8), body(9)]


async def test_cancelled_waits_leave_nothing_behind() -> None:
    inbox = AppInbox(1)
    with trio.move_on_after(0.01) as scope:
        await inbox.take()  # nothing to take
    assert scope.cancelled_caught
    await inbox.put(body(1))  # not handed to the cancelled taker: queued
    with trio.move_on_after(0.01) as scope:
        await inbox.put(body(2))  # full
    assert scope.cancelled_caught
    assert await inbox.take() == body(1)
    with trio.move_on_after(0.01) as scope:
        await inbox.take()  # the cancelled put left no event behind
    assert scope.cancelled_caught
