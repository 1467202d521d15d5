"""inference/batcher.py without a model or a server: clients that wait for their answer before
sending again come back to full batches when the batcher waits for them, and to split batches
when it takes what is queued at once."""

from __future__ import annotations

import asyncio

import pytest

from mha.inference.batcher import Batcher


def closed_loop(patience: float, clients: int = 8, rounds: int = 6) -> list[int]:
    """Batch sizes when `clients` each send one sentence, wait for its answer, pass through the
    event loop a few times (client i: i times, so that answers come back staggered, as over
    sockets) and send again."""
    sizes = []

    def decode(options, items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [item * 2 for item in items]

    async def client(i: int, batcher: Batcher) -> None:
        for n in range(rounds):
            assert await batcher.translate("greedy", [i * 100 + n]) == [2 * (i * 100 + n)]
            for _ in range(i):
                await asyncio.sleep(0)

    async def main() -> None:
        batcher = Batcher(decode, window=0.0, max_batch=64, patience=patience)
        batcher.start()
        await asyncio.wait_for(asyncio.gather(*(client(i, batcher) for i in range(clients))),
                               timeout=60)
        await batcher.close()

    asyncio.run(main())
    return sizes


def test_clients_that_come_back_together_are_waited_for():
    # patience in units of the last decoding time, here microseconds: long enough that only
    # the expected sentences end a wait, short enough to be no delay
    sizes = closed_loop(patience=1e5)
    assert sizes == [8] * 6


def test_without_patience_their_batches_split():
    sizes = closed_loop(patience=0.0)
    assert sum(sizes) == 48 and len(sizes) > 6 and min(sizes) < 8


def test_a_lone_client_never_waits():
    sizes = closed_loop(patience=1e5, clients=1)
    assert sizes == [1] * 6


@pytest.mark.parametrize("first", [3, 5])
def test_a_client_that_leaves_shrinks_the_wait(first):
    """One fewer client than expected: the wait ends at the patience, and the next batch
    expects the clients that came."""
    sizes = []

    def decode(options, items):
        sizes.append(len(items))
        return items

    async def main() -> None:
        batcher = Batcher(decode, window=0.0, max_batch=64, patience=1e3)
        batcher.start()
        await asyncio.gather(*(batcher.translate("greedy", [i]) for i in range(first)))
        assert batcher.expected == first
        await asyncio.gather(*(batcher.translate("greedy", [i]) for i in range(first - 1)))
        assert batcher.expected == first - 1
        await batcher.close()

    asyncio.run(main())
    assert sizes == [first, first - 1]
