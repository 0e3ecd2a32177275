import asyncio

import av

from livevsr.pipeline.fanout import SUBSCRIBER_QUEUE_PACKETS, Broadcaster, EncodedFrame


def packet(key: bool, n: int) -> EncodedFrame:
    p = av.Packet(bytes([n % 256]) * 8)
    p.is_keyframe = key
    p.pts = n
    return EncodedFrame(p)


async def test_a_stalled_viewer_never_blocks_the_others() -> None:
    requests: list[int] = []
    b = Broadcaster(lambda: requests.append(1))
    stalled, reader = b.subscribe(), b.subscribe()
    received: list[int] = []

    async def read() -> None:
        while len(received) < 100:
            received.append((await reader.recv()).packet.pts)

    task = asyncio.create_task(read())
    for n in range(100):
        b.publish(packet(key=n % 10 == 0, n=n))
        await asyncio.sleep(0)
    await asyncio.wait_for(task, 2)
    assert received == list(range(100))  # the reader got everything, in order
    assert stalled.queue.qsize() <= SUBSCRIBER_QUEUE_PACKETS
    assert stalled.skipped > 0 and len(requests) > 2  # it was reset and asked for keyframes


async def test_a_new_viewer_starts_at_a_keyframe_and_asks_for_one() -> None:
    requests: list[int] = []
    b = Broadcaster(lambda: requests.append(1))
    b.publish(packet(key=True, n=0))
    sub = b.subscribe()
    assert requests == [1]
    for n in (1, 2):
        b.publish(packet(key=False, n=n))
    assert sub.queue.empty()
    b.publish(packet(key=True, n=3))
    assert (await sub.recv()).packet.pts == 3


async def test_closing_a_subscription_wakes_its_reader() -> None:
    b = Broadcaster(lambda: None)
    sub = b.subscribe()
    waiter = asyncio.create_task(sub.recv())
    await asyncio.sleep(0)
    sub.close()
    assert await asyncio.wait_for(waiter, 1) is None
    assert b.subscriber_count == 0
