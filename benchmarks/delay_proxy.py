"""A TCP proxy that adds latency: every chunk a client sends (an HTTP request, in practice) reaches
the server `delay_ms` later; replies pass at once. Put between a reader and a local S3 server,
it gives each request the round trip that real object storage has.

    with delay_proxy(("127.0.0.1", server_port), delay_ms=10) as port: ...  # connect to 127.0.0.1:port
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    try:
        while data := await reader.read(1 << 16):
            if delay_s:
                await asyncio.sleep(delay_s)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(target: tuple[str, int], delay_ms: float, port: int) -> None:
    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, server_w, delay_ms / 1000), _pump(server_r, client_w, 0))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(server.sockets[0].getsockname()[1], flush=True)  # the port, for the parent
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def delay_proxy(target: tuple[str, int], delay_ms: float, port: int = 0) -> Iterator[int]:
    """A proxy to `target` on localhost `port` (0: a free one; the port is yielded), delaying what
    clients send by `delay_ms`; stopped on leaving the block. Proxies one after another on one port
    give a client that keeps its first endpoint (DALI's S3 reader) a new latency. A process of its
    own: a reader that holds the GIL while it waits for its requests (DALI's pipeline build) would
    otherwise stall it."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.delay_proxy", target[0], str(target[1]), str(delay_ms),
                             str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait()
        proc.stdout.close()


if __name__ == "__main__":
    asyncio.run(_serve((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]), int(sys.argv[4])))
