"""The image and the compose stack in a real engine (podman); run by scripts/container-test.

Not a pytest module (the suite must not need a container engine): a script that exits
non-zero on the first failed check and prints a JSON report. scripts/container-test builds
the image (CONTAINER_TEST_IMAGE) and the stand-in base images first.

1. image: the layers deploy/Dockerfile adds on top of its base (``podman history``) stay
   under 60 MB, OCI labels, numeric non-root user, no compiler in the final stage.
2. single containers: the relay with a mounted config, ``--read-only`` and a data volume
   (healthcheck healthy, uid 10001, root filesystem refuses writes, the entity store lives on
   the volume and survives a restart); the agent and the forwarder from the same image
   (``--network host``) carry an echo through it.
3. compose: deploy/compose.yaml under podman-compose (Redis, three relay nodes, nginx, an
   agent, Mosquitto; host ports are free loopback ports). Paho clients publish MQTT QoS 1
   messages through a forwarder container, nginx, the cluster and the agent to Mosquitto
   while the nodes are restarted one after another (SIGTERM: drain). Every message must
   arrive (at least once, in order per client), the agent's control channels must move off
   each node, and each restart's interruption (longest gap in a client's deliveries) is
   measured.

Everything binds loopback on free ports; containers, volumes and the compose project carry
a per-run prefix and are removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
IMAGE = os.environ.get("CONTAINER_TEST_IMAGE", "localhost/hybridrelay:local")
BASE_IMAGE = os.environ.get("CONTAINER_TEST_BASE_IMAGE", "")
RUN = f"hrct{os.getpid()}"
LAYER_BUDGET = 60 * 1000 * 1000
CLIENTS = 4
MESSAGES = 2000
# Paced while nodes restart (so every restart sees traffic), then the rest at full speed.
PACED_RATE = 20.0  # messages/s over all clients
SEND_KEY = "compose-demo-send-key-change-me-0000000000"  # deploy/compose/relay.toml
NODES = ("relay-1", "relay-2", "relay-3")

T = TypeVar("T")


class ContainerCheckError(Exception):
    pass


def check(condition: object, what: str) -> None:
    if not condition:
        raise ContainerCheckError(what)


def log(message: str) -> None:
    sys.stderr.write(f"== container-test: {message}\n")
    sys.stderr.flush()


def podman(*args: str, check_rc: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check_rc and done.returncode != 0:
        raise ContainerCheckError(
            f"podman {' '.join(args)}: rc={done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    detail: Callable[[], str] = lambda: "",
) -> T:
    """Poll ``probe`` until it returns something other than None/False, or fail."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except (OSError, ContainerCheckError, subprocess.SubprocessError, ValueError) as exc:
            last_error = exc
        time.sleep(0.2)
    raise ContainerCheckError(
        f"timed out after {timeout:.0f} s waiting for {what} ({detail()}; last: {last_error})"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(container: str) -> bool:
    # No systemd timers here: run the image's HEALTHCHECK on demand; podman records the result.
    done = subprocess.run(
        ["podman", "healthcheck", "run", container], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


def health_status(container: str) -> str:
    out = podman("inspect", "--format", "{{json .State}}", container)
    state = json.loads(out)
    health = state.get("Health") or state.get("Healthcheck") or {}
    return str(health.get("Status", ""))


# ---- 1. image hygiene ------------------------------------------------------------------------


def check_image() -> dict[str, Any]:
    log("image: layers, labels, user, compilers")
    history = json.loads(podman("history", "--format", "json", IMAGE))
    base_history = json.loads(podman("history", "--format", "json", BASE_IMAGE))
    ours = history[: len(history) - len(base_history)]
    layers: list[dict[str, Any]] = [
        {"size_bytes": int(row.get("size", 0)), "created_by": str(row.get("CreatedBy", ""))[:120]}
        for row in ours
    ]
    added = sum(int(layer["size_bytes"]) for layer in layers)
    check(added < LAYER_BUDGET, f"our layers are {added} bytes, budget {LAYER_BUDGET}")
    config = json.loads(podman("image", "inspect", IMAGE))[0]
    labels = config.get("Labels") or config["Config"].get("Labels") or {}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    check(labels.get("org.opencontainers.image.version") == version, f"version label {labels}")
    check(labels.get("org.opencontainers.image.source"), f"source label missing: {labels}")
    user = config["Config"].get("User", "")
    check(user == "10001:10001", f"image user {user!r}")
    compilers = podman(
        "run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
        "command -v gcc cc c++ g++ clang make ld as || true",
    ).split()  # fmt: skip
    check(not compilers, f"compilers in the final stage: {compilers}")
    roles = podman("run", "--rm", IMAGE, "--help")
    check("relay" in roles and "listen" in roles and "forward" in roles, roles)
    return {
        "image": IMAGE,
        "our_layers_bytes": added,
        "our_layers_mb": round(added / 1e6, 1),
        "layers": layers,
        "total_image_bytes": int(config.get("Size", 0)),
        "labels": {k: v for k, v in labels.items() if k.startswith("org.opencontainers")},
    }


def check_k8s_renders() -> dict[str, Any]:
    """``kubectl kustomize deploy/k8s`` (no API server here, so rendering is what can run)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return {"kubectl": None}
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "k8s")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    check(done.returncode == 0, f"kubectl kustomize: {done.stderr}")
    kinds = sorted(
        line.split(":", 1)[1].strip()
        for line in done.stdout.splitlines()
        if line.startswith("kind:")
    )
    check("StatefulSet" in kinds, f"rendered kinds {kinds}")
    return {"kubectl_kustomize_kinds": kinds}


# ---- 2. single containers ---------------------------------------------------------------------


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    conn.sendall(data)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def echo_through(port: int) -> bool:
    payload = secrets.token_bytes(4096)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                return False
            received += chunk
    return received == payload


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)  # read by uid 10001 in the container
    return path


def check_single_containers(work: Path, cleanup: list[list[str]]) -> dict[str, Any]:
    log("single containers: relay (read-only, data volume), agent, forwarder")
    relay_port, status_port, forward_port = free_port(), free_port(), free_port()
    root_key, listen_key, send_key = (secrets.token_urlsafe(32) for _ in range(3))
    relay_toml = write(
        work / "relay.toml",
        f"""
[relay]
host = "0.0.0.0"
port = 8080
data_dir = "/var/lib/hybridrelay"
drain_timeout = 2

[[rules]]
name = "root"
key = "{root_key}"
rights = ["Manage", "Listen", "Send"]

[[hybrid_connections]]
name = "echo"
[[hybrid_connections.rules]]
name = "listen"
key = "{listen_key}"
rights = ["Listen"]
[[hybrid_connections.rules]]
name = "send"
key = "{send_key}"
rights = ["Send"]
""",
    )
    agent_toml = write(
        work / "agent.toml",
        f"""
relays = ["ws://127.0.0.1:{relay_port}"]
agent_id = "{RUN}-agent"
status = "127.0.0.1:{status_port}"

[[mappings]]
hc = "echo"
target = "tcp://127.0.0.1:ECHO_PORT"
key_name = "listen"
key_env = "LISTEN_KEY"
""",
    )
    forward_toml = write(
        work / "forward.toml",
        f"""
relay = "ws://127.0.0.1:{relay_port}"

[[bindings]]
local = "127.0.0.1:{forward_port}"
hc = "echo"
key_name = "send"
key_env = "SEND_KEY"
""",
    )
    volume = f"{RUN}-data"
    relay = f"{RUN}-relay"
    podman("volume", "create", volume)
    cleanup.append(["volume", "rm", "-f", volume])
    cleanup.insert(0, ["rm", "-f", "-t", "0", relay])
    podman(
        "run", "-d", "--name", relay, "--read-only",
        "-v", f"{volume}:/var/lib/hybridrelay",
        "-v", f"{relay_toml}:/etc/hybridrelay/relay.toml:ro",
        "-p", f"127.0.0.1:{relay_port}:8080",
        # Rendezvous addresses must name the published port, not the container's 8080.
        "-e", f"HYBRIDRELAY_PUBLIC_URL=ws://127.0.0.1:{relay_port}",
        IMAGE,
    )  # fmt: skip
    started = time.monotonic()
    wait_for("the relay's healthcheck", lambda: healthy(relay), 60)
    healthy_after = time.monotonic() - started
    check(health_status(relay) == "healthy", f"health status {health_status(relay)!r}")
    pid = podman("inspect", "--format", "{{.State.Pid}}", relay).strip()
    uids = next(
        line.split()[1:]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    check(set(uids) == {"10001"}, f"relay process uids {uids}")
    refused = subprocess.run(
        ["podman", "exec", relay, "sh", "-c", "touch /opt/hybridrelay/x"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    check(refused.returncode != 0, "the root filesystem accepted a write")
    check("Read-only" in refused.stderr, f"unexpected refusal: {refused.stderr!r}")
    stored = podman("exec", relay, "ls", "-A", "/var/lib/hybridrelay").split()
    check(stored, "the relay wrote nothing to its data volume")
    podman("restart", "-t", "10", relay)
    wait_for("the relay's healthcheck after a restart", lambda: healthy(relay), 60)
    after = podman("exec", relay, "ls", "-A", "/var/lib/hybridrelay").split()
    check(set(stored) <= set(after), f"data volume lost {stored} -> {after}")

    with echo_server() as echo_port:
        write(agent_toml, agent_toml.read_text().replace("ECHO_PORT", str(echo_port)))
        agent, forwarder = f"{RUN}-agent", f"{RUN}-forward"
        cleanup.insert(0, ["rm", "-f", "-t", "0", agent])
        cleanup.insert(0, ["rm", "-f", "-t", "0", forwarder])
        podman(
            "run", "-d", "--name", agent, "--read-only", "--network", "host", "--no-healthcheck",
            "-e", f"LISTEN_KEY={listen_key}",
            "-v", f"{agent_toml}:/etc/hybridrelay/agent.toml:ro",
            IMAGE, "listen", "--config", "/etc/hybridrelay/agent.toml",
        )  # fmt: skip
        podman(
            "run", "-d", "--name", forwarder, "--read-only", "--no-healthcheck",
            "--network", "host", "-e", f"SEND_KEY={send_key}",
            "-v", f"{forward_toml}:/etc/hybridrelay/forward.toml:ro",
            IMAGE, "forward", "--config", "/etc/hybridrelay/forward.toml",
        )  # fmt: skip
        wait_for(
            "an echo through forwarder, relay and agent", lambda: echo_through(forward_port), 60
        )
        for _ in range(5):
            check(echo_through(forward_port), "a later echo failed")
        status = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{status_port}/status", timeout=5).read()
        )
        agent_uid = podman("exec", agent, "id", "-u").strip()
        forwarder_uid = podman("exec", forwarder, "id", "-u").strip()
        check(agent_uid == forwarder_uid == "10001", f"uids {agent_uid} {forwarder_uid}")
    return {
        "relay_healthy_after_s": round(healthy_after, 1),
        "relay_uids": uids,
        "data_volume_files": after,
        "agent_status_accepted": status["mappings"][0]["accepted"],
    }


# ---- 3. compose stack + rolling restart under MQTT traffic -----------------------------------


@dataclass
class Publisher:
    """One paho client (persistent session) publishing ``{RUN}/c{index}`` with seq payloads."""

    index: int
    port: int
    messages: list[mqtt.MQTTMessageInfo] = field(default_factory=list)
    connects: int = 0
    acked_mids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{RUN}-pub-{self.index}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        # One message in flight, and none published while disconnected or while one is
        # unacknowledged (ready()): paho 2.2 re-sends unacknowledged messages after CONNACK
        # but sends new ones at once, even before CONNACK (seen here: 71 ahead of 66..70), so
        # a client that needs order per topic (what this test checks) waits its turn.
        self.client.max_inflight_messages_set(1)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect

    @property
    def sent(self) -> int:
        return len(self.messages)

    def acked(self) -> int:
        # No lock of ours around publish(): on_publish runs under paho's mutex, so a lock
        # held around publish() deadlocks. set.add is atomic; mids do not wrap at 500.
        return len(self.acked_mids & {info.mid for info in self.messages})

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.acked_mids.add(mid)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self.connects += 1
            self.connected.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()

    def ready(self) -> bool:
        return self.connected.is_set() and self.acked() == self.sent

    def start(self) -> None:
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()

    def publish_next(self) -> None:
        # Queued by paho while disconnected (QoS 1), sent on reconnect.
        info = self.client.publish(f"{RUN}/c{self.index}", str(self.sent), qos=1)
        self.messages.append(info)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber:
    """mosquitto_sub inside the Mosquitto container: sees what reached the broker."""

    def __init__(self, container: str) -> None:
        self.arrivals: list[tuple[float, int, int]] = []  # (time, client, seq)
        self.probes = 0
        self.process = subprocess.Popen(
            ["podman", "exec", "-i", container, "mosquitto_sub", "-h", "127.0.0.1",
             "-q", "1", "-v", "-t", f"{RUN}/#"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            topic, _, payload = line.strip().partition(" ")
            kind = topic.rsplit("/", 1)[-1]
            if kind == "probe":
                self.probes += 1
            elif kind.startswith("c"):
                self.arrivals.append((time.monotonic(), int(kind[1:]), int(payload)))

    def close(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def agent_status(container: str) -> dict[str, Any]:
    out = podman(
        "exec", container, "python", "-c",
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:9100/status', timeout=3).read().decode())",
    )  # fmt: skip
    return dict(json.loads(out))


def channels_online(container: str) -> int:
    return int(agent_status(container)["mappings"][0]["connections_online"])


def channel_opens(container: str) -> list[tuple[str, str]]:
    """(listener id, relay URL) of every control_channel_open in the agent's JSON log."""
    done = subprocess.run(
        ["podman", "logs", container], capture_output=True, text=True, timeout=30, check=False
    )
    opens = []
    for line in (done.stdout + done.stderr).splitlines():
        if "control_channel_open" not in line:
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            opens.append((str(record.get("listener")), str(record.get("relay"))))
    return opens


def gaps_by_client(
    arrivals: list[tuple[float, int, int]], start: float, end: float
) -> dict[int, tuple[float, float]]:
    """Per client, the longest silence between two first deliveries ending inside [start, end]:
    (when it began, relative to ``start``; how long it lasted)."""
    seen: set[tuple[int, int]] = set()
    last: dict[int, float] = {}
    longest: dict[int, tuple[float, float]] = {}
    for at, client, seq in arrivals:
        if (client, seq) in seen:
            continue
        seen.add((client, seq))
        if start <= at <= end and client in last:
            gap = at - last[client]
            if gap > longest.get(client, (0.0, 0.0))[1]:
                longest[client] = (last[client] - start, gap)
        if at <= end:
            last[client] = at
    return longest


def save_logs(directory: Path, containers: list[str]) -> None:
    """Each container's log as ``NAME.log`` (kept after the run, for a failed CI job)."""
    directory.mkdir(parents=True, exist_ok=True)
    for container in containers:
        done = subprocess.run(
            ["podman", "logs", "-t", container],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        (directory / f"{container}.log").write_text(done.stdout + done.stderr, encoding="utf-8")


def free_subnet_prefix() -> str:
    """A 172.28.N prefix no podman network uses (the compose file pins node addresses)."""
    names = podman("network", "ls", "--format", "{{.Name}}").split()
    used = podman("network", "inspect", *names) if names else "[]"
    for third in range(240, 256):
        prefix = f"172.28.{third}"
        if f'"{prefix}.0/24"' not in used:
            return prefix
    raise ContainerCheckError("no free 172.28.240-255.0/24 subnet")


def check_compose(work: Path, cleanup: list[list[str]]) -> dict[str, Any]:
    log("compose: podman-compose up (Redis, 3 relays, nginx, agent, Mosquitto)")
    project = RUN
    ports = {name: free_port() for name in ("LB", "NODE1", "NODE2", "NODE3")}
    env = {
        **os.environ,
        "RELAY_DEMO_BIND": "127.0.0.1",
        "RELAY_DEMO_SUBNET_PREFIX": free_subnet_prefix(),
        **{f"RELAY_DEMO_{k}_PORT": str(v) for k, v in ports.items()},
    }
    # podman-compose >= 1.1 (PyPI): 1.0.3 (Debian bookworm) ignores network aliases.
    compose = [sys.executable, "-m", "podman_compose", "-p", project, "-f", str(COMPOSE_FILE)]
    cleanup.append([*compose, "down", "-t", "0"])
    logs_dir = Path(
        os.environ.get("CONTAINER_TEST_LOGS")
        or Path(tempfile.gettempdir()) / "hybridrelay-container-test-logs"
    )
    up = subprocess.run(
        [*compose, "up", "-d"], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    check(up.returncode == 0, f"podman-compose up: {up.stdout[-2000:]} {up.stderr[-2000:]}")

    def name(service: str) -> str:
        return f"{project}_{service}_1"

    agent, mosquitto = name("agent"), name("mosquitto")
    for node in NODES:
        wait_for(f"{node} healthy", functools.partial(healthy, name(node)), 120)
    wait_for("the agent's 3 control channels", lambda: channels_online(agent) == 3, 120)

    forward_port = free_port()
    forward_toml = write(
        work / "forward-compose.toml",
        f"""
relay = "ws://127.0.0.1:{ports["LB"]}"
ping_interval = 5

[[bindings]]
local = "127.0.0.1:{forward_port}"
hc = "mqtt"
key_name = "devices-send"
key_env = "SEND_KEY"
""",
    )
    forwarder = f"{RUN}-compose-forward"
    cleanup.insert(0, ["rm", "-f", "-t", "0", forwarder])
    podman(
        "run", "-d", "--name", forwarder, "--read-only", "--network", "host", "--no-healthcheck",
        "-e", f"SEND_KEY={SEND_KEY}",
        "-v", f"{forward_toml}:/etc/hybridrelay/forward.toml:ro",
        IMAGE, "forward", "--config", "/etc/hybridrelay/forward.toml",
    )  # fmt: skip

    subscriber = Subscriber(mosquitto)
    publishers = [Publisher(i, forward_port) for i in range(CLIENTS)]
    try:

        def probe() -> bool:
            podman("exec", mosquitto, "mosquitto_pub", "-h", "127.0.0.1", "-t", f"{RUN}/probe",
                   "-m", "x", "-q", "1")  # fmt: skip
            return subscriber.probes > 0

        wait_for("the subscriber", probe, 60)
        for publisher in publishers:
            publisher.start()
        wait_for(
            "every publisher connected through the relay",
            lambda: all(p.connects for p in publishers),
            60,
        )

        restarts: list[dict[str, Any]] = []
        done = threading.Event()
        failure: list[BaseException] = []

        def rolling_restart() -> None:
            try:
                time.sleep(3)  # traffic before the first restart, as a baseline
                for index, node in enumerate(NODES, start=1):
                    opens_before = len(channel_opens(agent))
                    started = time.monotonic()
                    podman("stop", "-t", "30", name(node), timeout=60)
                    stopped = time.monotonic()
                    podman("start", name(node))
                    wait_for(f"{node} healthy again", functools.partial(healthy, name(node)), 120)
                    back = time.monotonic()
                    wait_for("3 control channels", lambda: channels_online(agent) == 3, 60)
                    moved = [
                        relay
                        for _, relay in channel_opens(agent)[opens_before:]
                        if f":808{index}" not in relay
                    ]
                    restarts.append(
                        {
                            "node": node,
                            "start": started,
                            "end": time.monotonic(),
                            "drain_and_stop_s": round(stopped - started, 2),
                            "healthy_again_s": round(back - stopped, 2),
                            "agent_reopened_on": moved,
                        }
                    )
                    time.sleep(2)  # let traffic settle before the next node
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failure.append(exc)
            finally:
                done.set()

        log("rolling restart of relay-1..3 under MQTT QoS 1 traffic")
        restarter = threading.Thread(target=rolling_restart, daemon=True)
        traffic_started = time.monotonic()
        restarter.start()
        interval = CLIENTS / PACED_RATE
        next_round = time.monotonic()
        while sum(p.sent for p in publishers) < MESSAGES:
            # Paced rounds while nodes restart; a client that is not ready skips its turn.
            if done.is_set() or time.monotonic() >= next_round:
                next_round = time.monotonic() + interval
                for publisher in publishers:
                    if publisher.sent < MESSAGES // CLIENTS and publisher.ready():
                        publisher.publish_next()
            time.sleep(0.002)
        restarter.join(timeout=600)
        if failure:
            raise failure[0]
        check(len(restarts) == len(NODES), f"restarts {restarts}")

        wait_for(
            "every PUBACK",
            lambda: all(p.acked() == MESSAGES // CLIENTS for p in publishers),
            120,
            detail=lambda: f"acked {[p.acked() for p in publishers]}",
        )
        per_client = MESSAGES // CLIENTS
        wait_for(
            "every message at Mosquitto",
            lambda: len({(c, s) for _, c, s in subscriber.arrivals}) >= MESSAGES,
            60,
            detail=lambda: f"{len({(c, s) for _, c, s in subscriber.arrivals})} distinct",
        )
    finally:
        for publisher in publishers:
            publisher.stop()
        subscriber.close()
        save_logs(logs_dir, [forwarder, *(name(n) for n in (*NODES, "agent", "nginx"))])

    arrivals = list(subscriber.arrivals)
    result_clients = []
    for client in range(CLIENTS):
        seqs = [s for _, c, s in arrivals if c == client]
        first_seen: list[int] = []
        seen: set[int] = set()
        for seq in seqs:
            if seq not in seen:
                seen.add(seq)
                first_seen.append(seq)
        wrong = next((i for i, seq in enumerate(first_seen) if seq != i), None)
        check(
            wrong is None and len(first_seen) == per_client,
            f"client {client}: not every message in order ({len(first_seen)} distinct; "
            f"first deliveries around #{wrong}: {first_seen[max(0, (wrong or 0) - 5) :][:12]}; "
            f"all deliveries there: {seqs[max(0, seqs.index(wrong) - 8) :][:30] if wrong else []})",
        )
        result_clients.append(
            {
                "client": client,
                "published": per_client,
                "acked": publishers[client].acked(),
                "delivered": len(seqs),
                "distinct": len(first_seen),
                "duplicates": len(seqs) - len(first_seen),
                "connects": publishers[client].connects,
            }
        )
    for restart in restarts:
        check(restart["agent_reopened_on"], f"the agent did not move off {restart['node']}")
        gaps = gaps_by_client(arrivals, restart["start"], restart["end"])
        restart["interruption_s"] = round(max((g for _, g in gaps.values()), default=0.0), 2)
        restart["interruption_by_client_s"] = {
            str(c): round(g, 2) for c, (_, g) in sorted(gaps.items())
        }
        # When each client's longest silence began, in seconds after the stop was sent
        # (during the drain, or when the drained stream closed and the client reconnected).
        restart["interruption_began_after_s"] = {
            str(c): round(b, 2) for c, (b, _) in sorted(gaps.items())
        }
        restart["start"] = round(restart["start"] - traffic_started, 2)
        restart["end"] = round(restart["end"] - traffic_started, 2)
    return {
        "messages": MESSAGES,
        "clients": result_clients,
        "delivered": len(arrivals),
        "distinct": len({(c, s) for _, c, s in arrivals}),
        "paced_rate_per_s": PACED_RATE,
        "restarts": restarts,
        "logs": str(logs_dir),
    }


def main() -> int:
    started = time.monotonic()
    report: dict[str, Any] = {"run": RUN}
    cleanup: list[list[str]] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="hybridrelay-container-test-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        try:
            report["image"] = check_image()
            report["k8s"] = check_k8s_renders()
            for section, run in (("single", check_single_containers), ("compose", check_compose)):
                try:
                    report[section] = run(work, cleanup)
                finally:
                    # Each section leaves nothing behind, also when it failed.
                    for command in cleanup:
                        program = [] if command[0] == sys.executable else ["podman"]
                        subprocess.run(
                            [*program, *command], capture_output=True, timeout=300, check=False
                        )
                    cleanup.clear()
        except Exception as exc:  # noqa: BLE001 - any failure ends in the report, exit 1
            ok = False
            report["failed"] = str(exc) if isinstance(exc, ContainerCheckError) else repr(exc)
            log(f"FAILED: {report['failed']}")
    report["ok"] = ok
    report["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    out = os.environ.get("CONTAINER_TEST_REPORT") or str(
        Path(tempfile.gettempdir()) / "hybridrelay-container-test.json"
    )
    Path(out).write_text(text + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
