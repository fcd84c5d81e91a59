"""A delaying TCP proxy on 127.0.0.1 for the slow-PLC tests: requests pass at once, replies are held.

`DelayProxy(target_port, hold_ms=150)` listens on a free port of 127.0.0.1 and forwards every
connection to the target (pymodbus's own server, `station.testbench.plc_sim`). Bytes from the
client reach the server the moment they arrive, so the server's coil timeline shows when each
command really took effect; bytes from the server are held `hold_ms` (changeable while running)
before they go back, the way a PLC with a long scan cycle or a congested network answers late.
Every request and every released reply is timestamped with `time.monotonic_ns()` (the clock the
station and the simulated PLC use), so a test can read how long each command kept the link busy.
The proxy runs its asyncio loop in one thread that `stop()` joins; connections the client drops
(a request timeout) are closed on the server side too, like a real network would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field


@dataclass
class ProxyLog:
    requests_ns: list[int] = field(default_factory=list)   # a chunk from the client arrived
    replies_ns: list[int] = field(default_factory=list)    # a held reply was released to the client
    connections: int = 0


class DelayProxy:
    def __init__(self, target_port: int, *, hold_ms: float = 0.0, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.hold_ms = hold_ms
        self.log = ProxyLog()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> DelayProxy:
        self._thread.start()
        if not self._started.wait(5.0) or self._error is not None:
            raise RuntimeError(f"delay proxy did not start: {self._error}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(5.0)
        self._thread.join(5.0)

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ---- the proxy's own thread ------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        try:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        except OSError as exc:
            self._error = exc
            self._started.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._stopped = asyncio.Event()
        self._started.set()
        await self._stopped.wait()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._stopped.set()

    def _spawn(self, coro) -> asyncio.Task:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.log.connections += 1
        self._writers.add(c_writer)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()  # the PLC is down: the client sees its connection dropped
            self._writers.discard(c_writer)
            return
        self._writers.add(s_writer)
        up = self._spawn(self._pump(c_reader, s_writer, hold=False))
        down = self._spawn(self._pump(s_reader, c_writer, hold=True))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for writer in (c_writer, s_writer):
            writer.close()
            self._writers.discard(writer)
        up.cancel()
        down.cancel()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool) -> None:
        """Copy one direction; replies keep their order and are each released hold_ms after arrival."""
        releases: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        sender = self._spawn(self._release(releases, writer)) if hold else None
        try:
            while data := await reader.read(4096):
                now = time.monotonic_ns()
                if hold:
                    releases.put_nowait((now + int(self.hold_ms * 1e6), data))
                else:
                    self.log.requests_ns.append(now)
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if sender is not None:
                releases.put_nowait(None)
                await asyncio.gather(sender, return_exceptions=True)

    async def _release(self, releases: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        while (item := await releases.get()) is not None:
            due_ns, data = item
            await asyncio.sleep(max(0.0, (due_ns - time.monotonic_ns()) / 1e9))
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                return
            self.log.replies_ns.append(time.monotonic_ns())
