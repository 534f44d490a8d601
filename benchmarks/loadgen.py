"""An open-loop HTTP/1.1 load generator lean enough to share two cores with the server.

Requests go out at a constant rate whatever the server does, and each one's latency runs
from its *scheduled* send time, so a server that falls behind shows it: a closed loop
(send, wait, send) would slow down with the server and hide the queue. httpx, used first,
spent ~1.3 ms of CPU a request on this machine, as much as a third of what the server
spent; this client writes prepared bytes on raw asyncio streams and reads back only the
status line and Content-Length (~0.1-0.2 ms).

The load models many callers (checkout, app home, CRM, each with its own connections):
kept-alive connections are taken from the pool in the order they were freed (the one idle
longest first), so every open connection carries its share. A single busy client reusing
its freshest connection would pin the load to whichever server worker accepted it.

The generator must not stall itself, or its stall reads as the server's latency: each
request's task is created at its send time (creating a run's 4,000 tasks up front took
longer than the 0.1 s head start), and the cyclic garbage collector is off during a run
(a full collection of a process that has imported torch and Feast took ~0.2 s: the first
~45 requests of a run then showed 50-230 ms, which was the p99).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

TIMEOUT_S = 10.0


@dataclass
class Request:
    """One prepared request: its bytes on the wire."""

    raw: bytes

    @classmethod
    def get(cls, host: str, path: str) -> Request:
        return cls(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

    @classmethod
    def post_json(cls, host: str, path: str, body: dict) -> Request:
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        return cls(head.encode() + payload)


class Connection:
    """A kept-alive connection: send one request, read its whole response, return the
    status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, request: Request) -> int:
        self.writer.write(request.raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ConnectionError("response without Content-Length")  # never kept alive
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _summary(latencies: np.ndarray, elapsed: float, failures: int, opened: int) -> dict:
    """An open-loop run's figures: latency percentiles in ms (seconds in), throughput."""
    n = len(latencies)
    ms = latencies * 1000
    return {
        "requests": n,
        "throughput": n / elapsed,
        "failures": failures,
        "connections": opened,
        "mean": float(np.nanmean(ms)),
        **{f"p{q}": float(np.nanpercentile(ms, q)) for q in (50, 95, 99)},
    }


async def open_loop(
    host: str, port: int, requests: list[Request], rate: float, seconds: float, warm: int = 16
) -> dict:
    """Send `requests` in turn at `rate` per second for `seconds`, over kept-alive
    connections (`warm` opened before the clock starts, more whenever all are busy).
    Returns latency percentiles in ms from each request's scheduled time, throughput,
    failures (a non-200 answer, an error or a timeout) and the connections used."""
    n = int(rate * seconds)
    latencies = np.full(n, np.nan)
    failures = 0
    idle: deque[Connection] = deque()
    for _ in range(warm):
        idle.append(await Connection.open(host, port))
        await asyncio.sleep(0.005)  # one at a time, so each worker gets a fair chance to accept
    opened = warm

    async def one(i: int, scheduled: float) -> None:
        nonlocal failures, opened
        connection = None
        try:
            if idle:
                connection = idle.popleft()
            else:
                connection = await Connection.open(host, port)
                opened += 1
            async with asyncio.timeout(TIMEOUT_S):
                status = await connection.send(requests[i % len(requests)])
            idle.append(connection)
            if status != 200:
                failures += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            failures += 1
            if connection is not None:
                connection.close()
        latencies[i] = time.perf_counter() - scheduled

    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        start = time.perf_counter() + 0.1
        tasks = []
        for i in range(n):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    finally:
        gc.enable()
        gc.unfreeze()
    elapsed = time.perf_counter() - start
    for connection in idle:
        connection.close()
    return _summary(latencies, elapsed, failures, opened)
