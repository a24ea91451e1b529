#!/usr/bin/env python3
"""A real single-node Apache Kafka 4.x broker (KRaft) for tests and local runs.

The jars come from Maven Central through ``deploy/kafka/pom.xml``; nothing is
built. They are copied once into a cache directory outside the checkout
(``$MONITOR_CACHE_DIR/kafka-<version>/libs``, default ``~/.cache/llm-monitor``)
so a fresh clone does not download them again.

Usage (stdlib only, no virtualenv needed)::

    python deploy/kafka/broker.py resolve          # fetch the jars, print the libs dir
    python deploy/kafka/broker.py run              # start on free loopback ports;
                                                   # prints BOOTSTRAP=127.0.0.1:PORT
    python deploy/kafka/broker.py run --port 9092 --data-dir ./kafka-data

From Python (the pytest fixture does this)::

    broker = KafkaBroker.start(data_dir)
    broker.bootstrap          # "127.0.0.1:40123"
    broker.stop(); broker.restart()

If Maven cannot resolve the jars, ``resolve`` raises with Maven's own output:
the broker is never replaced by a mock.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

KAFKA_VERSION = "4.4.0"
HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

LOG4J2 = """\
status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.apache.name = org.apache.kafka
logger.apache.level = {level}
"""


class BrokerError(RuntimeError):
    """The broker could not be resolved or did not come up; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("MONITOR_CACHE_DIR", Path.home() / ".cache" / "llm-monitor"))


def libs_dir() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def resolve() -> Path:
    """Copy the broker's jars from Maven Central (via ~/.m2) into the cache once."""
    libs = libs_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH; install Maven 3 to resolve the Kafka broker jars")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn, "-B", "-q", "-f", str(POM),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(
            f"mvn could not resolve org.apache.kafka:kafka_2.13:{KAFKA_VERSION} "
            f"(exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(KAFKA_VERSION)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java is not on PATH; Kafka 4.x needs Java 17 or newer")
    return java


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaBroker:
    """One KRaft node acting as broker and controller on loopback ports.

    The log dir is formatted once; ``stop()`` and ``restart()`` keep it, so
    topics and committed offsets survive a restart on the same port (the fault
    tests rely on that).
    """

    def __init__(self, data_dir: Path, port: int | None = None, log_level: str = "WARN",
                 controller_port: int | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None
        self.libs = resolve()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, data_dir: Path, port: int | None = None, log_level: str = "WARN",
              timeout: float = 60.0, controller_port: int | None = None) -> "KafkaBroker":
        broker = cls(data_dir, port, log_level, controller_port)
        broker._configure()
        broker._launch(timeout)
        return broker

    def _configure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "kraft-logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.flush.interval.messages": "1",
            # A single local node: no reason to wait out the default 9 s broker session after a
            # crash before the restarted broker is unfenced.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "2000",
            "controller.quorum.election.timeout.ms": "500",
            "controller.quorum.fetch.timeout.ms": "1000",
        }
        (self.data_dir / "server.properties").write_text(
            "".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(level=self.log_level))
        if not (logs / "meta.properties").exists():
            proc = subprocess.run(
                # "--cluster-id=..." in one argument: a base64url id may start with "-"
                self._java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}",
                               "-c", str(self.data_dir / "server.properties")),
                capture_output=True, text=True)
            if proc.returncode != 0:
                raise BrokerError(f"formatting the KRaft log dir failed:\n{proc.stdout}\n{proc.stderr}")

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return [
            _java(), "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", main, *args,
        ]

    def _launch(self, timeout: float) -> None:
        log = open(self.data_dir / "broker.log", "ab")
        self.proc = subprocess.Popen(
            self._java_cmd("kafka.Kafka", str(self.data_dir / "server.properties")),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(f"broker exited with {self.proc.returncode}; see {self.data_dir / 'broker.log'}:\n"
                                  + self.log_tail())
            if _api_versions_ok(self.port):
                return
            time.sleep(0.2)
        raise BrokerError(f"broker did not answer on {self.bootstrap} within {timeout}s:\n" + self.log_tail())

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.data_dir / "broker.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); the log dir is kept."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the broker (a crash, not a shutdown); the log dir is kept."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def start_again(self, timeout: float = 60.0) -> None:
        """Start a stopped or killed broker on the same ports and log dir."""
        self._launch(timeout)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self._launch(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _api_versions_ok(port: int) -> bool:
    """True when the broker answers an ApiVersions request (v0) on ``port``."""
    # ApiVersions v0: api_key=18, api_version=0, correlation_id=1, client_id="probe"
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
    client_id = b"probe"
    body += len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(len(body).to_bytes(4, "big") + body)
            head = s.recv(4)
            if len(head) < 4:
                return False
            resp = s.recv(int.from_bytes(head, "big"))
            # correlation id (4) + error code (2)
            return len(resp) >= 6 and int.from_bytes(resp[4:6], "big") == 0
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("resolve", help="resolve the broker jars from Maven Central")
    run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    run.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    run.add_argument("--data-dir", type=Path, default=None, help="log dir (default: a temp dir)")
    run.add_argument("--log-level", default="WARN")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "resolve":
            print(resolve())
            return 0
        import tempfile
        data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="kafka-"))
        broker = KafkaBroker.start(data_dir, args.port, args.log_level)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"BOOTSTRAP={broker.bootstrap}", flush=True)
    print(f"kafka {KAFKA_VERSION} (KRaft) listening on {broker.bootstrap}, data in {data_dir}; Ctrl-C stops it",
          file=sys.stderr, flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and broker.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
