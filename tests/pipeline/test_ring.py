import threading

import pytest

from livevsr.pipeline.ring import FrameRing, RingClosed


def test_drop_policy_drops_the_oldest_whole_chunk_and_counts_it() -> None:
    dropped: list[list[int]] = []
    ring: FrameRing[int] = FrameRing(capacity=8, policy="drop", chunk=4, on_drop=dropped.append)
    for i in range(10):
        assert ring.put(i)
    # Full at 8 items; the 9th put drops 0..3 as one chunk.
    assert dropped == [[0, 1, 2, 3]]
    assert ring.dropped == 4
    assert ring.get_chunk(timeout=0) == [4, 5, 6, 7]
    assert len(ring) == 2


def test_ring_never_grows_past_capacity() -> None:
    ring: FrameRing[int] = FrameRing(capacity=5, policy="drop", chunk=1)
    for i in range(1000):
        ring.put(i)
        assert len(ring) <= 5
    assert ring.dropped == 995


def test_block_policy_waits_instead_of_dropping() -> None:
    ring: FrameRing[int] = FrameRing(capacity=2, policy="block", chunk=1)
    ring.put(0)
    ring.put(1)
    assert ring.put(2, timeout=0.05) is False  # would block: nothing is lost, the producer is told
    got: list[int] = []
    consumer = threading.Thread(target=lambda: got.extend(ring.get_chunk(timeout=1) or []))
    consumer.start()
    assert ring.put(2, timeout=2)
    consumer.join()
    assert got == [0]
    assert ring.dropped == 0


def test_close_hands_out_the_short_remainder_then_raises() -> None:
    ring: FrameRing[int] = FrameRing(capacity=16, policy="drop", chunk=4)
    for i in range(6):
        ring.put(i)
    ring.close()
    assert ring.put(99) is False
    assert ring.get_chunk() == [0, 1, 2, 3]
    assert ring.get_chunk() == [4, 5]
    with pytest.raises(RingClosed):
        ring.get_chunk()


def test_get_chunk_times_out_with_none() -> None:
    ring: FrameRing[int] = FrameRing(capacity=4, policy="drop", chunk=2)
    ring.put(1)
    assert ring.get_chunk(timeout=0.01) is None


def test_capacity_is_at_least_one_chunk() -> None:
    ring: FrameRing[int] = FrameRing(capacity=2, policy="drop", chunk=8)
    assert ring.capacity == 8
