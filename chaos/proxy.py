"""A Toxiproxy-compatible TCP fault proxy (server side), for machines without Toxiproxy.

The Go Toxiproxy server cannot be installed here, so this module serves the same v2 HTTP
API (proxies, toxics, populate, reset, version) with an asyncio data path; the unchanged
`toxiproxy-python` client drives it. docs/chaos-proxy.md lists what is implemented and how
it differs from upstream.

Entry points:
- `python -m semel.chaos.proxy --host 127.0.0.1 --port 8474` (SIGINT/SIGTERM: graceful stop);
- `await serve(host, port, stop=event)` inside an existing event loop;
- `ProxyServerThread` (in-process, background thread) and `ProxyServerProcess`
  (subprocess) for tests;
- `connect()`: a configured `toxiproxy.Toxiproxy` client, pointed at `$TOXIPROXY_URL`
  when set (a real server), else at this process's own server, started on first use.

Module map: `proxy_model` (pure validation and JSON shapes), `proxy_link` (data path and
toxics), `proxy_server` (proxies, routes, HTTP shell), this file (lifecycle).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from semel.chaos.proxy_model import (
    API_HEADER_BYTES_MAX,
    SHUTDOWN_TIMEOUT_MS,
    ApiError,
    parse_populate,
)
from semel.chaos.proxy_server import ApiHttpServer, ProxyCollection, Router

if TYPE_CHECKING:
    from toxiproxy import Toxiproxy

TOXIPROXY_URL_ENV = "TOXIPROXY_URL"
DEFAULT_API_PORT = 8474
READY_PREFIX = "semel-toxiproxy listening on "

log = logging.getLogger("semel.chaos.proxy")


def new_seed() -> int:
    return random.SystemRandom().randrange(2**32)


async def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_API_PORT,
    *,
    seed: int | None = None,
    config: Any = None,
    ready: Callable[[str, int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the API on host:port (0 = any free port) until `stop` is set (or cancelled).

    `seed` makes toxicity rolls, jitter and slicing replayable; `config` is a JSON array
    of proxies applied like POST /populate before `ready(host, port)` is called. On exit
    every proxy is disabled (listeners closed, connections dropped).
    """
    if seed is None:
        seed = new_seed()
    collection = ProxyCollection(random.Random(seed))
    api = ApiHttpServer(Router(collection))
    server = await asyncio.start_server(api.handle_connection, host, port, limit=API_HEADER_BYTES_MAX)
    try:
        if config is not None:
            await collection.populate(parse_populate(config))
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        log.info("API listening on %s:%d (seed %d)", bound_host, bound_port, seed)
        if ready is not None:
            ready(bound_host, bound_port)
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        server.close()
        await collection.shutdown()
        api.close_all()
        try:
            await asyncio.wait_for(server.wait_closed(), SHUTDOWN_TIMEOUT_MS / 1000.0)
        except asyncio.TimeoutError:
            log.warning("API server did not close within %d ms", SHUTDOWN_TIMEOUT_MS)


class ProxyServerThread:
    """Runs `serve()` on its own event loop in a daemon thread (for tests and `connect()`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, seed: int | None = None,
                 config: Any = None) -> None:
        self.host = host
        self.port = port
        self.seed = seed if seed is not None else new_seed()
        self.config = config
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> ProxyServerThread:
        self._thread = threading.Thread(target=self._run, name="semel-toxiproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("toxiproxy server thread did not start")
        if self._error is not None:
            raise RuntimeError("toxiproxy server thread failed to start") from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:   # reported to start() or logged; the thread just ends
            self._error = exc
            if self._ready.is_set():
                log.exception("toxiproxy server thread failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        def on_ready(host: str, port: int) -> None:
            self.host, self.port = host, port
            self._ready.set()

        await serve(self.host, self.port, seed=self.seed, config=self.config, ready=on_ready,
                    stop=self._stop)

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass   # loop already closed
        if thread is not None:
            thread.join(timeout_s)

    def __enter__(self) -> ProxyServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxyServerProcess:
    """Runs `python -m semel.chaos.proxy` as a subprocess on a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, seed: int | None = None,
                 python: str = sys.executable) -> None:
        self.host = host
        self.port = port
        self.seed = seed if seed is not None else new_seed()
        self.python = python
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> ProxyServerProcess:
        cmd = [self.python, "-m", "semel.chaos.proxy", "--host", self.host, "--port", str(self.port),
               "--seed", str(self.seed)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = _readline_within(self.proc.stdout, timeout_s)
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(f"toxiproxy subprocess did not start: {line!r}")
        address = urlsplit(line[len(READY_PREFIX):].split()[0])
        self.host, self.port = address.hostname or self.host, address.port or self.port
        return self

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then wait; returns the exit code (SIGKILL after the timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ProxyServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _readline_within(stream: Any, timeout_s: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    return str(stream.readline())


# --- the client side: TOXIPROXY_URL or our own server ---------------------------------------

_shared_lock = threading.Lock()
_shared_server: ProxyServerThread | None = None


def shared_server() -> ProxyServerThread:
    """This process's own server (started on first use, stopped at exit)."""
    global _shared_server
    with _shared_lock:
        if _shared_server is None:
            _shared_server = ProxyServerThread().start()
            atexit.register(_shared_server.stop)
        return _shared_server


def parse_url(url: str) -> tuple[str, int]:
    """`http://host:port`, `host:port` or `http://host` (port 8474) -> (host, port)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        raise ValueError(f"bad toxiproxy URL {url!r}")
    return parts.hostname, parts.port or DEFAULT_API_PORT


def server_address(url: str | None = None) -> tuple[str, int]:
    """Where the API is: `url`, else $TOXIPROXY_URL, else our own server (started now)."""
    url = url if url is not None else os.environ.get(TOXIPROXY_URL_ENV) or None
    if url is not None:
        return parse_url(url)
    server = shared_server()
    return server.host, server.port


def connect(url: str | None = None) -> Toxiproxy:
    """A `toxiproxy.Toxiproxy` client for `url`, $TOXIPROXY_URL, or our own server.

    toxiproxy-python keeps host and port as *class* attributes of its APIConsumer: every
    client object in the process talks to the server configured last.
    """
    from toxiproxy import Toxiproxy

    host, port = server_address(url)
    client = Toxiproxy()
    client.update_api_consumer(host, port)
    return client


client = connect   # the name the brief and other helpers may look for


# --- command line ---------------------------------------------------------------------------


def _build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default="127.0.0.1", help="API address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_API_PORT, help="API port (0: any free port)")
    parser.add_argument("--seed", type=int, default=None, help="seed for toxicity, jitter, slicing")
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON file with an array of proxies to create at start (as POST /populate)")
    return parser


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else new_seed()
    config = json.loads(args.config.read_text()) if args.config is not None else None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(host: str, port: int) -> None:
            print(f"{READY_PREFIX}http://{host}:{port} (seed {seed})", flush=True)

        await serve(args.host, args.port, seed=seed, config=config, ready=ready, stop=stop)

    try:
        asyncio.run(main())
    except (OSError, ApiError) as exc:
        print(f"semel-toxiproxy: {exc}", file=sys.stderr)
        return 1
    return 0


def add_commands(subparsers: Any) -> None:
    """`semel toxiproxy ...` for cluster/cli/main.py's COMMAND_MODULES (if registered)."""
    parser = subparsers.add_parser("toxiproxy", help="run the Toxiproxy-compatible fault proxy")
    _build_parser(parser).set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = _build_parser(argparse.ArgumentParser(prog="python -m semel.chaos.proxy",
                                                   description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
