"""The front door of a local deployment: a TCP forwarder on `serving.port` that sends each
new connection to the live slot's server, as named in the deployment record.

Switching traffic is rewriting that record (serving.deploy.deployment): the next connection goes
to the new server. A kept-alive connection to the old one (which stays up as the standby)
is retired between requests, never in the middle of one: its next answer carries
`Connection: close`, so the client reconnects, to the new server; one that stays quiet
for IDLE_S is closed (HTTP clients reopen a pooled connection the peer closed). Apart
from that header the bytes pass untouched, which keeps the hop cheap and every answer,
4xx included, exactly the server's. In Kubernetes a Service plays this part
(docker/k8s).

    python -m serving.deploy.router --port 3300 --record <ws>/live/deployment.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from pathlib import Path

logger = logging.getLogger("couponflow.router")
_BODY = b'{"error": "no live couponflow release"}\n'
NO_RELEASE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)
CHUNK = 64 * 1024
IDLE_S = 0.5  # a connection to a retired slot quiet this long is closed
SWEEP_S = 0.25


class LivePort:
    """The live slot's port, re-read from the deployment record whenever it changes."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self._stamp: int | None = None
        self._port: int | None = None

    def __call__(self) -> int | None:
        try:
            stamp = self.record.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if stamp != self._stamp:  # written by os.replace: never half a file
            live = json.loads(self.record.read_text()).get("live")
            self._port = int(live["port"]) if live else None
            self._stamp = stamp
            logger.info("live slot: port %s", self._port)
        return self._port


class Connection:
    """A client connection forwarded to the slot on `port`, with when bytes last went each
    way: a request whose answer has not started is never cut."""

    def __init__(self, port: int, writers: tuple[asyncio.StreamWriter, ...]) -> None:
        self.port = port
        self.writers = writers
        self.last = {"request": time.monotonic(), "answer": time.monotonic()}
        self.retired = False  # its slot is no longer live: leave at the next answer

    def quiet(self, now: float) -> bool:
        """Answered its last request, and nothing since for IDLE_S."""
        return self.last["answer"] >= self.last["request"] and now - self.last["answer"] > IDLE_S

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, way: str
) -> None:
    """Copy one `way` ("request" or "answer") until its end, then half-close the other
    side."""
    try:
        while data := await reader.read(CHUNK):
            conn.last[way] = time.monotonic()
            if conn.retired and way == "answer" and data.startswith(b"HTTP/1."):
                data = data.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def serve(port: int, record: Path, host: str = "127.0.0.1") -> None:
    """Forward connections on host:port to the live slot until SIGTERM or SIGINT."""
    live = LivePort(record)
    open_connections: set[Connection] = set()

    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        target = live()
        try:
            if target is None:
                raise ConnectionRefusedError("no live release")
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError as exc:
            logger.warning("no upstream for a connection: %r", exc)
            client_w.write(NO_RELEASE)
            with contextlib.suppress(OSError):
                await client_w.drain()
            client_w.close()
            return
        conn = Connection(target, (server_w, client_w))
        open_connections.add(conn)
        try:
            await asyncio.gather(
                _pipe(client_r, server_w, conn, "request"),
                _pipe(server_r, client_w, conn, "answer"),
            )
        finally:
            open_connections.discard(conn)
            conn.close()

    async def retire_old_connections() -> None:
        """Retire connections to a slot that is no longer live; close the quiet ones."""
        while True:
            await asyncio.sleep(SWEEP_S)
            port, now = live(), time.monotonic()
            for conn in [c for c in open_connections if c.port != port]:
                conn.retired = True
                if conn.quiet(now):
                    conn.close()

    server = await asyncio.start_server(forward, host, port, reuse_address=True, backlog=2048)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # the record's place in the workspace, not its absolute path: the log stays true if it moves
    where = Path(*record.parts[-2:])
    logger.info("router on %s:%s, live slot from %s of the workspace", host, port, where)
    sweeper = asyncio.create_task(retire_old_connections())
    async with server:
        await stop.wait()
    sweeper.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.port, args.record, args.host))


if __name__ == "__main__":
    main()
