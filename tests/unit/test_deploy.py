"""deploy/: the container image, compose, nginx, Kubernetes and systemd files agree with the code.

No container engine is needed: the YAML is parsed, the configs it mounts are loaded with
the real loaders (with each node's or pod's environment), and ports, probe paths, shutdown
budgets and ``HYBRIDRELAY_*`` names are checked against what the relay and agent know.
``nginx -t`` runs on the shipped nginx config when nginx is on PATH (see that test for how
the compose-only upstream names are handled).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from hybridrelay.listener import config as agent_config
from hybridrelay.listener.config import load_agent_config
from hybridrelay.relay import config as relay_config
from hybridrelay.relay.config import load_relay_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
NGINX = DEPLOY / "nginx" / "hybridrelay.conf"
DOCKERFILE = DEPLOY / "Dockerfile"
RELAY_SERVICES = ("relay-1", "relay-2", "relay-3")

SYSTEMD_RELAY = DEPLOY / "systemd" / "hybridrelay-relay.service"


def _named_env_reads(*paths: Path) -> set[str]:
    """``HYBRIDRELAY_*`` names read one by one (``env.get("HYBRIDRELAY_X")``) in ``paths``."""
    names: set[str] = set()
    for path in paths:
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r'env(?:iron)?\.get\(\s*"(HYBRIDRELAY_[A-Z_]+)"', text))
    return names


# Every HYBRIDRELAY_* name the code reads: the [relay] overrides, the agent overrides, and
# the names read one by one ([cluster] Redis URL and node id, the development key, the
# CLI's logging options), taken from the source so a rename here breaks this test.
KNOWN_ENV = (
    {f"HYBRIDRELAY_{key.upper()}" for key in relay_config._ENV_TYPES}
    | {
        "HYBRIDRELAY_" + (key if key == "agent_id" else f"agent_{key}").upper()
        for key in agent_config._ENV_OVERRIDES
    }
    | _named_env_reads(
        ROOT / "relay" / "hybridrelay" / "relay" / "config.py",
        ROOT / "core" / "hybridrelay" / "cli.py",
    )
)
CLUSTER_ENV = ("HYBRIDRELAY_REDIS_URL", "HYBRIDRELAY_NODE_ID", "HYBRIDRELAY_PUBLIC_URL")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                assert isinstance(doc, dict), path
                docs.append(doc)
    return docs


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d["kind"] == kind]


def _env_names(env: Any) -> set[str]:
    if isinstance(env, dict):
        return set(env)
    if isinstance(env, list):
        return {e["name"] if isinstance(e, dict) else str(e).split("=", 1)[0] for e in env}
    return set()


def _port_of(env: dict[str, str], toml_port: int) -> int:
    return int(env.get("HYBRIDRELAY_PORT", toml_port))


def _relay_app_paths() -> set[str]:
    source = (ROOT / "relay" / "hybridrelay" / "relay" / "app.py").read_text(encoding="utf-8")
    return set(re.findall(r'add_get\("(/[^"]*)"', source))


def _dockerfile_instructions() -> Iterator[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


# ---- Dockerfile ------------------------------------------------------------------------


def test_dockerfile_is_multistage_slim_non_root_with_healthcheck() -> None:
    instructions = list(_dockerfile_instructions())
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2
    # Pinned: one exact Python release on one Debian release, the same in every stage (the
    # final stage runs the venv the build stage made).
    images = {f.split()[0] for f in froms}
    assert len(images) == 1, images
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", images.pop())
    labels = " ".join(rest for word, rest in instructions if word == "LABEL")
    for label in ("org.opencontainers.image.source", "org.opencontainers.image.version"):
        assert label in labels
    version = re.search(r"ARG VERSION=(\S+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert version
    assert version.group(1) == _pyproject_version()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    exposed = [rest for word, rest in instructions if word == "EXPOSE"]
    assert exposed == [str(relay_config.RelaySettings().port)]
    healthchecks = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0]
    assert "python" in healthchecks[0]
    assert ("ENTRYPOINT", '["hybridrelay"]') in instructions
    assert ("CMD", '["relay", "serve", "--config", "/etc/hybridrelay/relay.toml"]') in instructions
    env_names = set(re.findall(r"HYBRIDRELAY_[A-Z_]+", DOCKERFILE.read_text(encoding="utf-8")))
    assert env_names <= KNOWN_ENV


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"', text, re.M)
    assert match
    return match.group(1)


def test_image_dependencies_are_pinned_and_match_pyproject() -> None:
    """deploy/requirements.lock pins (==) every runtime dependency pyproject.toml names."""
    lock = {}
    for raw in (DEPLOY / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, line
            assert version, line
            lock[name.lower().replace("_", "-")] = version
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = text[text.index("dependencies = [") : text.index("]", text.index("dependencies = ["))]
    names = re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block, re.M)
    assert names
    for name in names:
        assert name.lower().replace("_", "-") in lock, name
    for compose_image in (s["image"] for s in _compose()["services"].values() if "image" in s):
        if compose_image != "hybridrelay:local":
            assert re.search(r":\d+\.\d+\.\d+", compose_image), compose_image


def test_dockerignore_keeps_what_the_wheel_build_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        rest.split()[0].rstrip("/")
        for word, rest in _dockerfile_instructions()
        if word == "COPY" and not rest.startswith("--from")
    }
    for name in copied | {"pyproject.toml", "README.md"}:
        assert name in kept, name
        assert (ROOT / name).exists(), name


# ---- compose ---------------------------------------------------------------------------


def test_compose_services_and_images() -> None:
    services = _compose()["services"]
    assert {"redis", "nginx", "agent", "mosquitto", *RELAY_SERVICES} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
    for name in RELAY_SERVICES:
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert services["agent"]["command"][:2] == ["listen", "--config"]


def test_known_env_covers_the_cluster_settings() -> None:
    # Guards the source scan above: these must be found, or every env check is toothless.
    assert set(CLUSTER_ENV) | {"HYBRIDRELAY_DEV_KEY", "HYBRIDRELAY_LOG_LEVEL"} <= KNOWN_ENV


def test_compose_env_names_are_known_to_the_code() -> None:
    for name, service in _compose()["services"].items():
        used = {n for n in _env_names(service.get("environment")) if n.startswith("HYBRIDRELAY_")}
        assert used <= KNOWN_ENV, (name, used - KNOWN_ENV)
    for name in RELAY_SERVICES:
        assert set(CLUSTER_ENV) <= _env_names(_compose()["services"][name]["environment"])


def test_compose_relay_nodes_have_own_public_urls_routed_by_nginx() -> None:
    services = _compose()["services"]
    nginx_ports = {int(p.split(":")[-1]) for p in services["nginx"]["ports"]}
    aliases = services["nginx"]["networks"]["default"]["aliases"]
    nginx_conf = NGINX.read_text(encoding="utf-8")
    public_urls = []
    for name in RELAY_SERVICES:
        env = services[name]["environment"]
        assert env["HYBRIDRELAY_REDIS_URL"].startswith("redis://redis:")
        url = env["HYBRIDRELAY_PUBLIC_URL"]
        public_urls.append(url)
        match = re.fullmatch(r"ws://([^:/]+):(\d+)", url)
        assert match, url
        host, port = match.group(1), int(match.group(2))
        assert host in aliases
        assert port in nginx_ports
        # That nginx port proxies to this node alone.
        block = re.search(
            rf"listen {port};\s*location / \{{\s*proxy_pass http://([\w-]+):(\d+);", nginx_conf
        )
        assert block, port
        assert block.group(1) == name
    assert len(set(public_urls)) == len(RELAY_SERVICES)


def test_compose_configs_exist_and_load() -> None:
    services = _compose()["services"]
    mounts: dict[str, Path] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            path = (COMPOSE.parent / source).resolve()
            assert path.is_file(), source
            mounts[target] = path
    for name in RELAY_SERVICES:
        service = services[name]
        env = {k: str(v) for k, v in service["environment"].items()}
        config_path = service["command"][service["command"].index("--config") + 1]
        config = load_relay_config(mounts[config_path], env=env)
        assert config.cluster is not None
        assert config.cluster.redis_url == env["HYBRIDRELAY_REDIS_URL"]
        assert config.cluster.node_id == env["HYBRIDRELAY_NODE_ID"] == name
        assert config.relay.public_url == env["HYBRIDRELAY_PUBLIC_URL"]
        assert config.relay.host == "0.0.0.0"
        # nginx proxies to the port the node listens on.
        assert f"{name}:{config.relay.port}" in NGINX.read_text(encoding="utf-8")
        grace = float(service["stop_grace_period"].rstrip("s"))
        assert grace > config.relay.drain_timeout
    service = services["agent"]
    env = {k: str(v) for k, v in service["environment"].items()}
    agent_path = mounts[service["command"][service["command"].index("--config") + 1]]
    agent = load_agent_config(agent_path, env=env, hostname="test")
    relay_public = {services[n]["environment"]["HYBRIDRELAY_PUBLIC_URL"] for n in RELAY_SERVICES}
    assert set(agent.relays) == relay_public
    (mapping,) = agent.mappings
    assert mapping.connections % len(agent.relays) == 0  # a listener on every node
    assert mapping.target.startswith("tcp://mosquitto:")


def test_compose_relay_keys_match_between_relay_and_agent() -> None:
    services = _compose()["services"]
    relay = load_relay_config(DEPLOY / "compose" / "relay.toml", env={})
    env = {k: str(v) for k, v in services["agent"]["environment"].items()}
    agent = load_agent_config(DEPLOY / "compose" / "agent.toml", env=env, hostname="test")
    (mapping,) = agent.mappings
    hc = relay.hybrid_connection(mapping.hc)
    assert hc is not None
    rule = next(r for r in hc.rules if r.name == mapping.key_name)
    assert rule.key.value == mapping.key.value


# ---- nginx -----------------------------------------------------------------------------


def test_nginx_config_is_websocket_aware() -> None:
    text = NGINX.read_text(encoding="utf-8")
    for directive in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_buffering off;",
    ):
        assert directive in text, directive
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", text)
    assert read_timeout
    assert int(read_timeout.group(1)) > relay_config.RelaySettings().ping_interval * 2
    upstream = re.search(r"upstream hybridrelay \{(.*?)\}", text, re.S)
    assert upstream
    assert re.findall(r"server ([\w-]+):\d+", upstream.group(1)) == list(RELAY_SERVICES)


def _nginx_version(nginx: str) -> tuple[int, ...]:
    result = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10, check=False)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", result.stderr)
    assert match, result.stderr
    return tuple(int(part) for part in match.groups())


@pytest.mark.skipif(
    shutil.which("nginx") is None and not os.environ.get("CI"),
    reason="nginx is not installed (CI installs it and fails without it)",
)
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """``nginx -t`` on a rendered copy of the compose setup (deploy/compose/nginx.conf
    including deploy/nginx/hybridrelay.conf), changed only where it must be outside Docker:

    * ``nginx -t`` resolves every upstream host name, and ``relay-1..3`` exist only on the
      compose network, so they become 127.0.0.1 (same ports; nothing is connected to);
    * the include and the pid file point into ``tmp_path``, and ``-p tmp_path/`` keeps every
      relative path there, so neither root nor /etc/nginx is needed;
    * ``-e stderr`` (nginx >= 1.19.5) stops nginx from opening its compiled-in error log
      (/var/log/nginx/error.log, root-only) before it reads the config.

    Every other directive is tested as shipped.
    """
    nginx = shutil.which("nginx")
    assert nginx
    site = NGINX.read_text(encoding="utf-8")
    for name in RELAY_SERVICES:
        assert f"{name}:" in site
        site = site.replace(f"{name}:", "127.0.0.1:")
    (tmp_path / "hybridrelay.conf").write_text(site, encoding="utf-8")
    main = (DEPLOY / "compose" / "nginx.conf").read_text(encoding="utf-8")
    assert "/etc/nginx/conf.d/hybridrelay.conf" in main
    main = main.replace("/etc/nginx/conf.d/hybridrelay.conf", str(tmp_path / "hybridrelay.conf"))
    main = re.sub(r"^pid .*;$", f"pid {tmp_path / 'nginx.pid'};", main, flags=re.M)
    (tmp_path / "nginx.conf").write_text(main, encoding="utf-8")
    args = [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")]
    if _nginx_version(nginx) >= (1, 19, 5):
        args[1:1] = ["-e", "stderr"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# ---- Kubernetes ------------------------------------------------------------------------


def test_k8s_manifests_parse_and_cover_the_kinds() -> None:
    docs = _k8s_docs()
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
    kinds = {d["kind"] for d in docs}
    assert {
        "StatefulSet",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "Ingress",
        "Secret",
    } <= kinds
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "relay-config.example.yaml" not in kustomization["resources"]


def _relay_container() -> tuple[dict[str, Any], dict[str, Any]]:
    (sts,) = _kind("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return sts, container


def _container_env() -> dict[str, str]:
    """The container's environment: ConfigMaps it imports, then its own literal values."""
    _, container = _relay_container()
    configmaps = {c["metadata"]["name"]: c["data"] for c in _kind("ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def _example_relay_toml(tmp_path: Path) -> Path:
    (secret,) = _kind("Secret")
    path = tmp_path / "relay.toml"
    path.write_text(secret["stringData"]["relay.toml"], encoding="utf-8")
    return path


def test_k8s_env_names_are_known_to_the_code() -> None:
    _, container = _relay_container()
    used = {n for n in _container_env() if n.startswith("HYBRIDRELAY_")}
    used |= {e["name"] for e in container["env"] if e["name"].startswith("HYBRIDRELAY_")}
    assert used <= KNOWN_ENV, used - KNOWN_ENV
    assert "HYBRIDRELAY_REDIS_URL" in used


def _pod_env(pod_name: str, namespace: str = "relay") -> dict[str, str]:
    """The relay container's environment in pod ``pod_name``, as the kubelet builds it:
    ConfigMaps first, then ``env`` in order (downward API fields, ``$(VAR)`` references
    to variables defined before)."""
    _, container = _relay_container()
    configmaps = {c["metadata"]["name"]: c["data"] for c in _kind("ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"]
            )
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_k8s_every_pod_is_its_own_cluster_node(tmp_path: Path) -> None:
    sts, container = _relay_container()
    env_items = {e["name"]: e for e in container["env"]}
    node_id_ref = env_items["HYBRIDRELAY_NODE_ID"]["valueFrom"]["fieldRef"]
    assert node_id_ref["fieldPath"] == "metadata.name"
    path = _example_relay_toml(tmp_path)
    (ingress,) = _kind("Ingress")
    backends = {
        r["host"]: p["backend"]["service"]["name"]
        for r in ingress["spec"]["rules"]
        for p in r["http"]["paths"]
    }
    services = {s["metadata"]["name"]: s for s in _kind("Service")}
    seen_urls, seen_ids = set(), set()
    for i in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{i}"
        config = load_relay_config(path, env=_pod_env(pod))
        assert config.cluster is not None
        assert config.cluster.node_id == pod
        assert config.cluster.redis_url.startswith("redis")
        url = config.relay.public_url
        assert "$(" not in url
        seen_urls.add(url)
        seen_ids.add(config.cluster.node_id)
        # The public URL's host is routed by the Ingress to a Service selecting this pod only.
        host = url.split("://", 1)[1].split("/")[0].split(":")[0]
        selector = services[backends[host]]["spec"]["selector"]
        assert selector["statefulset.kubernetes.io/pod-name"] == pod
    assert len(seen_urls) == len(seen_ids) == sts["spec"]["replicas"]


def test_k8s_public_url_comes_from_the_pod_name() -> None:
    _, container = _relay_container()
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    names = list(env)
    assert names.index("POD_NAME") < names.index("HYBRIDRELAY_PUBLIC_URL")  # $(VAR) order
    url = env["HYBRIDRELAY_PUBLIC_URL"]["value"]
    assert "$(POD_NAME)" in url
    (ingress,) = _kind("Ingress")
    hosts = {r["host"] for r in ingress["spec"]["rules"]}
    sts, _ = _relay_container()
    host_template = re.fullmatch(r"wss://([^/:]+)", url)
    assert host_template
    for i in range(sts["spec"]["replicas"]):
        assert host_template.group(1).replace("$(POD_NAME)", f"hybridrelay-{i}") in hosts


def test_k8s_ports_probes_and_shutdown(tmp_path: Path) -> None:
    sts, container = _relay_container()
    env = _container_env()
    config = load_relay_config(_example_relay_toml(tmp_path), env=env)
    (port,) = container["ports"]
    assert port["containerPort"] == config.relay.port == _port_of(env, 0)
    assert config.relay.host == "0.0.0.0"
    assert config.cluster is not None
    assert config.relay.public_url.startswith("wss://")
    paths = _relay_app_paths()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths
        assert get["port"] in (port["name"], port["containerPort"])
    resources = container["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    pod = sts["spec"]["template"]["spec"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop_s = float(pre_stop[-1]) if pre_stop[0] == "sleep" else 0.0
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + config.relay.drain_timeout + 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["args"][-1].startswith(mounts["config"] + "/")
    assert container["args"][:2] == ["relay", "serve"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    (secret,) = _kind("Secret")
    assert config_volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert mounts["data"] == config.relay.data_dir


def test_k8s_services_select_the_pods() -> None:
    sts, container = _relay_container()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_name = container["ports"][0]["name"]
    services = {s["metadata"]["name"]: s for s in _kind("Service")}
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    for service in services.values():
        selector = dict(service["spec"]["selector"])
        selector.pop("statefulset.kubernetes.io/pod-name", None)
        assert selector.items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] == port_name
    (ingress,) = _kind("Ingress")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["name"] in services
    (pdb,) = _kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        pdb["spec"].get("maxUnavailable", 0) >= 1
        or pdb["spec"].get("minAvailable", 0) < (sts["spec"]["replicas"])
    )


# ---- systemd ---------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (continuations joined), values per key in order."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    values: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_relay_unit_drains_and_takes_cluster_settings() -> None:
    unit = _unit(SYSTEMD_RELAY)
    (exec_start,) = unit["ExecStart"]
    assert exec_start.split()[1:4] == ["relay", "serve", "--config"]
    assert unit["KillSignal"] == ["SIGTERM"]
    (stop_s,) = unit["TimeoutStopSec"]
    assert float(stop_s) > relay_config.RelaySettings().drain_timeout + 1
    assert unit["User"] != ["root"]
    assert any(f.lstrip("-").startswith("/etc/hybridrelay/") for f in unit["EnvironmentFile"])
    text = SYSTEMD_RELAY.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"HYBRIDRELAY_[A-Z_]+", text))
    assert set(CLUSTER_ENV) <= mentioned
    assert mentioned <= KNOWN_ENV, mentioned - KNOWN_ENV
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        if path != SYSTEMD_RELAY:
            names = set(re.findall(r"HYBRIDRELAY_[A-Z_]+", path.read_text(encoding="utf-8")))
            # hybridrelay-listen@ passes its own variables (from its EnvironmentFile) as
            # command-line arguments; the key through --key-env HYBRIDRELAY_KEY.
            names -= {"HYBRIDRELAY_RELAY", "HYBRIDRELAY_KEY_NAME", "HYBRIDRELAY_KEY"}
            names -= {"HYBRIDRELAY_TARGET"}
            assert names <= KNOWN_ENV, (path.name, names - KNOWN_ENV)


# ---- docs ------------------------------------------------------------------------------


def test_deploy_docs_name_only_settings_the_code_knows() -> None:
    for doc in ("deploy.md", "scaling.md"):
        text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
        names = set(re.findall(r"HYBRIDRELAY_[A-Z][A-Z_]*[A-Z]", text))
        assert names <= KNOWN_ENV, (doc, names - KNOWN_ENV)
        for target in re.findall(r"\]\(([^)#\s]+)", text):  # relative links resolve
            if "://" not in target:
                assert (ROOT / "docs" / target).resolve().exists(), (doc, target)


def _compose_default(value: str) -> str:
    """``${NAME:-default}`` -> ``default`` (what compose substitutes with NAME unset)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def test_compose_relay_nodes_keep_their_addresses_across_restarts() -> None:
    """nginx resolves relay-N once: each node has a fixed address in the declared subnet."""
    import ipaddress

    compose = _compose()
    (subnet,) = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    network = ipaddress.ip_network(_compose_default(subnet))
    addresses = set()
    for name in RELAY_SERVICES:
        address = ipaddress.ip_address(
            _compose_default(compose["services"][name]["networks"]["default"]["ipv4_address"])
        )
        assert address in network, (name, address)
        addresses.add(address)
    assert len(addresses) == len(RELAY_SERVICES)
    for port in compose["services"]["nginx"]["ports"]:
        # Overridable host side (scripts/container-test binds free loopback ports).
        assert port.startswith("${RELAY_DEMO_BIND:-"), port
