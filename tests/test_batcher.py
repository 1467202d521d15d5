"""inference/batcher.py without a model or a server: clients that wait for their answer before
sending again come back to full batches when the batcher waits for them, and to split batches
when it takes what is queued at once; clients that do not come back are not waited for."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from mha.inference.batcher import Batcher


def run(main) -> None:
    """asyncio.run(main()) in a thread of its own: the page tests' Playwright keeps an event loop
    running in the main thread."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()


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
            sent = i * 100 + n
            assert await batcher.translate("greedy", [sent], client=i) == [2 * sent]
            for _ in range(i):
                await asyncio.sleep(0)

    async def main() -> None:
        batcher = Batcher(decode, window=0.0, max_batch=64, patience=patience)
        batcher.start()
        await asyncio.wait_for(asyncio.gather(*(client(i, batcher) for i in range(clients))),
                               timeout=60)
        await batcher.close()

    run(main)
    return sizes


def test_clients_that_come_back_together_are_waited_for():
    # patience in units of the last decoding time, here microseconds: long enough that only
    # the clients' return ends a wait, short enough to be no delay
    assert closed_loop(patience=1e5) == [8] * 6


def test_without_patience_their_batches_split():
    sizes = closed_loop(patience=0.0)
    assert sum(sizes) == 48 and len(sizes) > 6 and min(sizes) < 8


def test_a_lone_client_never_waits():
    assert closed_loop(patience=1e5, clients=1) == [1] * 6


def test_clients_that_do_not_come_back_are_not_waited_for_until_they_do():
    """After a wait that ran out (a client left, or requests arrive on their own), the next
    batch takes what is queued at once; once every client answered came back within the
    patience, the batcher waits for them again."""
    sizes = []

    def decode(options, items):
        sizes.append(len(items))
        return items

    async def send(batcher: Batcher, clients) -> None:
        await asyncio.gather(*(batcher.translate("greedy", [c], client=c) for c in clients))

    async def main() -> None:
        batcher = Batcher(decode, window=0.0, max_batch=64, patience=1e3)
        batcher.start()
        await send(batcher, range(4))
        assert batcher.answered == {0, 1, 2, 3} and batcher.trusted
        await send(batcher, range(2))  # clients 2 and 3 left: the wait runs out
        assert batcher.answered == {0, 1} and not batcher.trusted
        batcher.patience = 1e7  # a wait now would outlast the test's timeout
        held = batcher.stats.held_seconds
        await asyncio.wait_for(send(batcher, [0]), timeout=10)  # client 1 does not come
        assert batcher.stats.held_seconds - held < 1 and not batcher.trusted
        await send(batcher, [0, 5])  # a new client: not awaited, and 0 came back
        assert batcher.trusted and batcher.answered == {0, 5}
        await batcher.close()

    run(main)
    assert sizes == [4, 2, 1, 2]
