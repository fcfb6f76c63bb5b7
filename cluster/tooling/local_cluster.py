"""A local cluster of broker subprocesses on one machine: `semel cluster up` and the test harness.

`plan_cluster` (pure) lays out N brokers: client ports `base_port`, `base_port + 1`, ...;
metadata-quorum (Raft) ports `raft_base_port + i` (default `base_port + 10000`), every
broker a Raft voter; data in `DATA_DIR/broker-N`, logs in `DATA_DIR/broker-N.log`. The
metadata Raft traffic is encrypted and authenticated with `DATA_DIR/raft-secret` (mode 0600,
generated on first start, kept across restarts; `semel.cluster.metadata.raft_secret`), passed
to every broker as `--raft-secret-file`: zero configuration, nothing secret on a command line.

`LocalCluster` is the supervisor: it starts `python -m semel.cluster.broker ...` per broker
(the broker contract in docs/design.md), waits until each prints `SEMEL_BROKER_READY` and
the metadata lists every broker unfenced, and stops them with SIGTERM (SIGKILL after a
grace period). It never restarts a broker on its own: a broker that exits unexpectedly is
reported to `on_unexpected_exit` (exit code and the tail of its log). Tests use `kill`,
`pause`, `resume` and `restart` explicitly; `semel cluster up` (`run_cluster_up`) restarts a
crashed broker after a delay and keeps the others serving.

Brokers run in their own session (Ctrl-C in a terminal reaches the supervisor only, which
then stops them in order) with SEMEL_BROKER_DIE_WITH_PARENT=1, so each sets
PR_SET_PDEATHSIG=SIGKILL on Linux and a supervisor that dies for any reason takes its
brokers with it: no orphans holding ports. (PDEATHSIG fires when the *thread* that started
the broker exits, so start brokers from a long-lived thread, as `semel cluster up` and the
test harness do: the main thread.)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semel.client.security import ClientSecurity

from semel.storage import power_cut

BROKER_MODULE = "semel.cluster.broker.process"
READY_MARKER = "SEMEL_BROKER_READY"
DIE_WITH_PARENT_ENV = "SEMEL_BROKER_DIE_WITH_PARENT"  # the broker then sets PR_SET_PDEATHSIG=SIGKILL
RAFT_PORT_OFFSET = 10000
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 40
RAFT_SECRET_FILE_NAME = "raft-secret"
RAFT_SECRET_RANDOM_BYTES = 32  # written as url-safe base64 (43 characters); the broker wants >= 16


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerSpec:
    broker_id: int
    host: str
    port: int
    raft_port: int
    data_dir: Path
    metrics_port: int | None = None  # Prometheus GET /metrics (--metrics-listen); None: no endpoint
    kafka_port: int = 0  # 0: no Kafka-protocol listener

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def kafka_address(self) -> str:
        return f"{self.host}:{self.kafka_port}" if self.kafka_port else ""

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"


def plan_cluster(
    brokers: int, data_dir: str | Path, base_port: int, raft_base_port: int | None = None, host: str = "127.0.0.1",
    metrics_base_port: int | None = None,
    kafka_base_port: int | None = None,
) -> list[BrokerSpec]:
    """Brokers 1..N with consecutive client ports, consecutive Raft ports and (with
    `metrics_base_port`, `kafka_base_port`) consecutive metrics and Kafka ports."""
    if brokers < 1:
        raise ValueError("--brokers must be >= 1")
    raft_base = base_port + RAFT_PORT_OFFSET if raft_base_port is None else raft_base_port
    ports = [base_port + i for i in range(brokers)] + [raft_base + i for i in range(brokers)]
    if metrics_base_port is not None:
        ports += [metrics_base_port + i for i in range(brokers)]
    kafka = [kafka_base_port + i for i in range(brokers)] if kafka_base_port is not None else []
    ports += kafka
    if min(ports) < 1 or max(ports) > 65535:
        raise ValueError(f"ports {min(ports)}..{max(ports)} out of range; choose another --base-port")
    if len(set(ports)) != len(ports):
        raise ValueError("client, Raft, metrics and Kafka port ranges overlap; choose another --raft-base-port, "
                         "--metrics-base-port or --kafka-base-port")
    root = Path(data_dir)
    return [
        BrokerSpec(i + 1, host, base_port + i, raft_base + i, root / f"broker-{i + 1}",
                   None if metrics_base_port is None else metrics_base_port + i, kafka_port=kafka[i] if kafka else 0)
        for i in range(brokers)
    ]


def ensure_raft_secret_file(directory: str | Path) -> Path:
    """DIRECTORY/raft-secret, created (random, mode 0600 from the start) unless it exists: a
    cluster restarted on the same data dir keeps its secret."""
    path = Path(directory) / RAFT_SECRET_FILE_NAME
    Path(directory).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(RAFT_SECRET_RANDOM_BYTES) + "\n")
    return path


def broker_argv(spec: BrokerSpec, voters: Sequence[BrokerSpec], extra_args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        BROKER_MODULE,
        "--broker-id", str(spec.broker_id),
        "--listen", spec.address,
        "--advertised", spec.address,
        "--data-dir", str(spec.data_dir),
        "--raft", spec.raft_address,
        "--voters", ",".join(f"{v.broker_id}@{v.raft_address}@{v.address}" for v in voters),
        *(() if spec.metrics_port is None else ("--metrics-listen", f"{spec.host}:{spec.metrics_port}")),
        *(("--kafka-listen", spec.kafka_address, "--kafka-advertised", spec.kafka_address) if spec.kafka_port else ()),
        *(a.replace("{broker_id}", str(spec.broker_id)) for a in extra_args),  # per-broker files (--secure)
    ]


class BrokerProcess:
    """One broker subprocess; its merged stdout/stderr go to `log_path` (and optionally `echo`)."""

    def __init__(
        self,
        spec: BrokerSpec,
        argv: list[str],
        log_path: Path,
        echo: Callable[[str], None] | None = None,
        on_exit: Callable[[BrokerProcess, int], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.argv = argv
        self.log_path = log_path
        self.echo = echo
        self.on_exit = on_exit
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.exited = threading.Event()
        self.expected_exit = False
        self.paused = False
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        if self.alive():
            raise AssertionError(f"broker {self.spec.broker_id} is already running")
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready.clear()
        self.exited.clear()
        self.expected_exit = False
        self.paused = False
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The broker sets PR_SET_PDEATHSIG itself after exec. Never a preexec_fn here: this
        # process uses gRPC, and a Python fork runs gRPC's fork handlers in the child, which
        # intermittently aborts it before exec (docs/design.md, broker contract).
        env[DIE_WITH_PARENT_ENV] = "1"
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        self._reader = threading.Thread(
            target=self._read_output, args=(self.popen,), name=f"broker-{self.spec.broker_id}-log", daemon=True
        )
        self._reader.start()

    def _read_output(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        with open(self.log_path, "ab", buffering=0) as log:
            for raw in popen.stdout:
                log.write(raw)
                line = raw.decode(errors="replace").rstrip("\n")
                self._tail.append(line)
                if line.startswith(READY_MARKER):
                    self.ready.set()
                if self.echo is not None:
                    self.echo(f"[broker-{self.spec.broker_id}] {line}")
        code = popen.wait()
        self.exited.set()
        if self.on_exit is not None:
            self.on_exit(self, code)

    def tail(self) -> list[str]:
        return list(self._tail)

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL. Returns the exit code."""
        if self.popen is None:
            return None
        self.expected_exit = True
        if self.alive():
            if self.paused:
                self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.popen.returncode

    def kill(self) -> None:
        """kill -9: no clean shutdown."""
        if self.popen is None:
            return
        self.expected_exit = True
        self.signal(signal.SIGKILL)
        self.popen.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)


class ClusterStartError(Exception):
    """A broker did not become ready (its log tail is in the message)."""


class LocalCluster:
    """Starts, watches and stops a set of broker processes (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[BrokerSpec],
        log_dir: str | Path,
        extra_args: Sequence[str] = (),
        echo: Callable[[str], None] | None = None,
        on_unexpected_exit: Callable[[BrokerProcess, int], None] | None = None,
        env: dict[str, str] | None = None,
        raft_secret_file: Path | None = None,
        client_security: ClientSecurity | None = None,
    ) -> None:
        """`raft_secret_file` None: `log_dir/raft-secret`, created if missing (mode 0600).
        `client_security`: how this supervisor's own admin calls reach the brokers (None: the
        SEMEL_TLS_* / SEMEL_USER variables, plaintext without them)."""
        self.client_security = client_security
        self.specs = list(specs)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.raft_secret_file = raft_secret_file or ensure_raft_secret_file(self.log_dir)
        extra_args = [*extra_args, "--raft-secret-file", str(self.raft_secret_file)]
        self.on_unexpected_exit = on_unexpected_exit
        self.brokers: dict[int, BrokerProcess] = {
            spec.broker_id: BrokerProcess(
                spec,
                broker_argv(spec, self.specs, extra_args),
                self.log_dir / f"broker-{spec.broker_id}.log",
                echo=echo,
                on_exit=self._exited,
                env=env,
            )
            for spec in self.specs
        }

    @property
    def bootstrap(self) -> str:
        return ",".join(spec.address for spec in self.specs)

    @property
    def kafka_bootstrap(self) -> str:
        """The Kafka-protocol bootstrap list ("" when the brokers have no Kafka listener)."""
        return ",".join(spec.kafka_address for spec in self.specs if spec.kafka_port)

    def address(self, broker_id: int) -> str:
        return self.brokers[broker_id].spec.address

    def _exited(self, broker: BrokerProcess, code: int) -> None:
        if not broker.expected_exit and self.on_unexpected_exit is not None:
            self.on_unexpected_exit(broker, code)

    # --- lifecycle ------------------------------------------------------------------
    def start(self, timeout_s: float = READY_TIMEOUT_S, wait: bool = True) -> None:
        for broker in self.brokers.values():
            broker.start()
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, broker_ids: Sequence[int] | None = None) -> None:
        """Every (selected) broker printed its ready line and the metadata lists it unfenced."""
        deadline = time.monotonic() + timeout_s
        ids = list(self.brokers) if broker_ids is None else list(broker_ids)
        for broker_id in ids:
            broker = self.brokers[broker_id]
            while not broker.ready.wait(0.05):
                if broker.exited.is_set() or not broker.alive():
                    raise ClusterStartError(self._failure(broker, "exited before it was ready"))
                if time.monotonic() >= deadline:
                    raise ClusterStartError(self._failure(broker, f"not ready after {timeout_s:.0f} s"))
        self._wait_metadata(ids, deadline)

    def _wait_metadata(self, ids: Sequence[int], deadline: float) -> None:
        from semel.client import Admin
        from semel.client.errors import SemelError

        alive = [self.brokers[i].spec.address for i in self.brokers if self.brokers[i].alive()]
        wanted = set(ids)
        last = ""
        with Admin(alive, request_timeout_ms=2000, security=self.client_security) as admin:
            while True:
                try:
                    cluster = admin.describe_cluster(timeout_ms=2000)
                    unfenced = {b.broker_id for b in cluster.brokers if not b.fenced}
                    if wanted <= unfenced:
                        return
                    last = f"metadata lists unfenced brokers {sorted(unfenced)}, waiting for {sorted(wanted)}"
                except SemelError as exc:
                    last = str(exc)
                if time.monotonic() >= deadline:
                    raise ClusterStartError(f"cluster not ready: {last}")
                time.sleep(0.05)

    def _failure(self, broker: BrokerProcess, what: str) -> str:
        tail = "\n".join("    " + line for line in broker.tail()[-20:])
        code = broker.popen.returncode if broker.popen else None
        return (
            f"broker {broker.spec.broker_id} ({broker.spec.address}) {what}"
            + (f" (exit code {code})" if code is not None else "")
            + f"; log {broker.log_path}:\n{tail}"
        )

    def stop(self, grace_s: float = STOP_GRACE_S) -> dict[int, int | None]:
        """SIGTERM every broker (in parallel), SIGKILL stragglers; returns exit codes."""
        codes: dict[int, int | None] = {}
        threads = []
        for broker_id, broker in self.brokers.items():
            def stop_one(b: BrokerProcess = broker, i: int = broker_id) -> None:
                codes[i] = b.stop(grace_s)

            thread = threading.Thread(target=stop_one)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        return codes

    def kill(self, broker_id: int) -> None:
        self.brokers[broker_id].kill()

    def terminate(self, broker_id: int, grace_s: float = STOP_GRACE_S) -> int | None:
        return self.brokers[broker_id].stop(grace_s)

    def pause(self, broker_id: int) -> None:
        broker = self.brokers[broker_id]
        broker.signal(signal.SIGSTOP)
        broker.paused = True

    def resume(self, broker_id: int) -> None:
        broker = self.brokers[broker_id]
        broker.signal(signal.SIGCONT)
        broker.paused = False

    def restart(self, broker_id: int, timeout_s: float = READY_TIMEOUT_S, kill: bool = False) -> None:
        broker = self.brokers[broker_id]
        if kill:
            broker.kill()
        else:
            broker.stop()
        broker.start()
        self.wait_ready(timeout_s, [broker_id])

    def power_cut(self, broker_ids: Sequence[int], seed: int, *, torn: bool = False,
                  restart: bool = True, timeout_s: float = READY_TIMEOUT_S) -> dict[int, dict[str, int]]:
        """Brokers started with `SEMEL_TEST_POWER_CUT=1` (env) lose power together: SIGKILL to all
        of them first, then each data dir becomes its durable image (`semel.storage.power_cut`),
        then (restart) they start again. Returns each broker's restore counts."""
        for broker_id in broker_ids:
            self.brokers[broker_id].expected_exit = True
            with contextlib.suppress(ProcessLookupError):  # reaped by its reader thread meanwhile
                self.brokers[broker_id].signal(signal.SIGKILL)
        stats = {}
        for broker_id in broker_ids:
            broker = self.brokers[broker_id]
            with contextlib.suppress(ProcessLookupError):
                broker.kill()
            if broker.popen is not None:
                broker.popen.wait()
            stats[broker_id] = power_cut.cut(broker.spec.data_dir, seed * 1000 + broker_id, torn=torn)
        if restart:
            for broker_id in broker_ids:
                self.brokers[broker_id].start()
            self.wait_ready(timeout_s, list(broker_ids))
        return stats

    def running(self) -> list[int]:
        return [i for i, b in self.brokers.items() if b.alive()]

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ======================================================================================
# `semel cluster up`
# ======================================================================================
RESTART_DELAY_S_DEFAULT = 3.0
CRASH_LOOP_LIMIT = 3          # crashes of one broker within CRASH_LOOP_WINDOW_S: leave it down
CRASH_LOOP_WINDOW_S = 60.0


def run_cluster_up(
    brokers: int,
    data_dir: str,
    base_port: int,
    raft_base_port: int | None,
    follow_logs: bool,
    extra_args: Sequence[str],
    ready_timeout_s: float,
    restart_delay_s: float | None = RESTART_DELAY_S_DEFAULT,
    metrics_base_port: int | None = None,
    kafka_base_port: int | None = None,
    secure: bool = False,
) -> int:
    """Foreground supervisor: start, print how to connect, wait for Ctrl-C/SIGTERM, stop.

    A broker that dies after the cluster was ready is reported (exit code, log tail) and the
    others keep serving (that is what replication is for); it is restarted after
    `restart_delay_s` (None: left down), unless it crashed CRASH_LOOP_LIMIT times within
    CRASH_LOOP_WINDOW_S. A broker that dies before the cluster is ready stops everything
    (a configuration problem). Exit code 0 when every broker runs at the end, else 1."""
    try:
        specs = plan_cluster(brokers, data_dir, base_port, raft_base_port, metrics_base_port=metrics_base_port,
                             kafka_base_port=kafka_base_port)
    except ValueError as exc:
        print(f"semel cluster up: {exc}", file=sys.stderr)
        return 2
    busy = [spec for spec in specs if any(_port_in_use(spec.host, port) for port in (
        spec.port, spec.raft_port, spec.metrics_port, spec.kafka_port) if port)]
    if busy:
        ports = ", ".join("/".join(str(p) for p in (s.port, s.raft_port, s.metrics_port, s.kafka_port) if p) for s in busy)
        print(
            f"semel cluster up: port(s) {ports} already in use (another cluster running?); "
            "stop it or pass --base-port",
            file=sys.stderr,
        )
        return 1
    stop = threading.Event()
    ready = threading.Event()
    lock = threading.Lock()
    crashes: dict[int, list[float]] = collections.defaultdict(list)
    restart_at: dict[int, float] = {}  # broker id -> monotonic time of its restart
    left_down: set[int] = set()

    def say(line: str) -> None:
        with lock:
            print(line, file=sys.stderr, flush=True)

    def unexpected(broker: BrokerProcess, code: int) -> None:
        broker_id = broker.spec.broker_id
        tail = "\n".join("    " + line for line in broker.tail()[-10:])
        now = time.monotonic()
        with lock:
            recent = [t for t in crashes[broker_id] if now - t < CRASH_LOOP_WINDOW_S] + [now]
            crashes[broker_id] = recent
        if not ready.is_set():
            say(f"semel cluster up: broker {broker_id} exited during start-up (code {code}). "
                f"Log {broker.log_path}:\n{tail}")
            stop.set()
            return
        others = [i for i, b in cluster.brokers.items() if i != broker_id and b.alive()]
        if restart_delay_s is None:
            plan = "not restarting it (--no-restart)"
        elif len(recent) >= CRASH_LOOP_LIMIT:
            plan = f"it crashed {len(recent)} times in {CRASH_LOOP_WINDOW_S:.0f} s: leaving it down"
        else:
            plan = f"restarting it in {restart_delay_s:g} s"
        say(f"semel cluster up: broker {broker_id} exited unexpectedly (code {code}); "
            f"{len(others)} of {len(cluster.brokers)} broker(s) still running; {plan}. "
            f"Log {broker.log_path}:\n{tail}")
        with lock:
            if restart_delay_s is None or len(recent) >= CRASH_LOOP_LIMIT:
                left_down.add(broker_id)
            else:
                restart_at[broker_id] = now + restart_delay_s
        if not others and broker_id in left_down:
            stop.set()  # nothing left to supervise

    setup = None
    if secure:  # TLS + authentication: CA, certificates, admin user, DATA_DIR/admin.env
        from semel.cluster.tooling import secure_cluster

        setup = secure_cluster.prepare(data_dir, [(s.broker_id, s.host) for s in specs],
                                       ",".join(s.address for s in specs),
                                       ",".join(s.kafka_address for s in specs if s.kafka_port),
                                       [f"{s.host}:{s.metrics_port}" for s in specs if s.metrics_port is not None])
        extra_args = [*setup.broker_args, *extra_args]
    cluster = LocalCluster(
        specs, data_dir, extra_args, echo=say if follow_logs else None, on_unexpected_exit=unexpected,
        client_security=None if setup is None else setup.client,
    )

    def restart_due() -> None:
        # on the main thread: PDEATHSIG is tied to the thread that starts a broker
        now = time.monotonic()
        with lock:
            due = [i for i, t in restart_at.items() if t <= now]
            for i in due:
                del restart_at[i]
        for broker_id in due:
            say(f"semel cluster up: restarting broker {broker_id} ...")
            started = time.monotonic()
            cluster.brokers[broker_id].start()

            def wait_back(i: int = broker_id, t0: float = started) -> None:
                try:
                    cluster.wait_ready(ready_timeout_s, [i])
                    say(f"semel cluster up: broker {i} is back, pid {cluster.brokers[i].pid} "
                        f"({time.monotonic() - t0:.1f} s)")
                except Exception as exc:  # its exit (if any) is reported by `unexpected`
                    say(f"semel cluster up: broker {i} did not come back: {exc}")

            threading.Thread(target=wait_back, daemon=True).start()

    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    try:
        say(f"starting {brokers} broker(s) in {Path(data_dir).resolve()} (logs: {data_dir}/broker-N.log) ...")
        cluster.start(wait=False)
        failure: list[str] = []

        def wait() -> None:
            try:
                cluster.wait_ready(ready_timeout_s)
                ready.set()
            except Exception as exc:  # report, then stop
                failure.append(str(exc))
                stop.set()

        threading.Thread(target=wait, daemon=True).start()
        while not stop.is_set() and not ready.is_set():
            stop.wait(0.1)
        if failure:
            say(f"semel cluster up: {failure[0]}")
            exit_code = 1
        elif ready.is_set() and not stop.is_set():
            bootstrap = cluster.bootstrap
            print(f"cluster ready: {brokers} broker(s); bootstrap {bootstrap}", flush=True)
            if metrics_base_port is not None:
                scheme = "http" if setup is None else "https"  # --secure: the brokers' certificates
                urls = [f"{scheme}://{s.host}:{s.metrics_port}/metrics" for s in specs]
                print("metrics: " + ", ".join(urls), flush=True)
                if setup is not None and setup.prometheus_config is not None:
                    print(f"metrics are HTTPS with basic auth (user {secure_cluster.METRICS_USER}, password in "
                          f"{setup.metrics_password}); Prometheus: {setup.prometheus_config}; by hand: "
                          f"{setup.scrape_hint(urls[0])}", flush=True)
            if cluster.kafka_bootstrap:
                print(f"Kafka protocol bootstrap: {cluster.kafka_bootstrap}", flush=True)
            for broker in cluster.brokers.values():
                kafka = f", kafka {broker.spec.kafka_address}" if broker.spec.kafka_port else ""
                print(
                    f"  broker {broker.spec.broker_id}: {broker.spec.address} (raft {broker.spec.raft_address}{kafka}), "
                    f"pid {broker.pid}, log {broker.log_path}",
                    flush=True,
                )
            first = specs[0].address
            semel = _semel_command()
            if setup is not None:
                print(f"secure: TLS (CA {setup.client.tls_ca}), authentication and ACLs required; super user "
                      f"{setup.client.username}, credentials in {setup.admin_env}", flush=True)
                if setup.kafka_client is not None:
                    print(f"Kafka clients: SASL_SSL with SCRAM-SHA-256 (or PLAIN) as the same users; settings in "
                          f"{setup.kafka_client} (kcat -F {setup.kafka_client} -L)", flush=True)
            connect = f"  source {setup.admin_env}\n" if setup is not None else f"  export SEMEL_BOOTSTRAP={first}\n"
            print(
                "try:\n"
                + connect +
                f"  {semel} topic create demo --partitions 3 --replication-factor "
                f"{min(3, brokers)}\n"
                f"  echo hello | {semel} produce demo\n"
                f"  {semel} consume demo --from-beginning --max-messages 1\n"
                "Ctrl-C stops the cluster.",
                flush=True,
            )
            while not stop.is_set():
                stop.wait(0.2)
                restart_due()
        if not ready.is_set() or left_down or restart_at:
            exit_code = 1
    finally:
        say("stopping brokers ...")
        codes = cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        unclean = {i: c for i, c in codes.items() if c not in (0, None, -signal.SIGTERM)}
        say("all brokers stopped" + (f" (exit codes {unclean})" if unclean else ""))
    return exit_code


def _semel_command() -> str:
    """How the user can run `semel` from here: plain `semel` when that is on the PATH and is
    the one running, else the path that was used (e.g. `.venv/bin/semel`)."""
    import shutil

    argv0 = Path(sys.argv[0])
    on_path = shutil.which("semel")
    if on_path and argv0.name == "semel" and Path(on_path).resolve() == argv0.resolve():
        return "semel"
    if argv0.name == "semel":
        return str(argv0)
    return f"{sys.executable} -m semel.cli"


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
