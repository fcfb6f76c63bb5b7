"""Every deployment file in deploy/ checked against the broker it deploys.

Containers cannot run on the dev machines (no Docker engine, no Kubernetes), so the files are
validated here instead: parsed, and every flag, port, probe, volume, env var and address they
use is compared with the broker's real flag parser (`build_arg_parser`), its config dataclass
(`BrokerConfig`) and the health probe's parser. The per-pod / per-service arguments are
expanded the way Docker Compose and Kubernetes would and fed to `BrokerConfig.from_args`, so a
config that the broker would refuse at start-up fails here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from semel.cluster.broker import health_probe
from semel.cluster.broker import process as broker_process
from semel.cluster.broker.process import BrokerConfig, build_arg_parser, parse_voter, split_address
from semel.cluster.tooling.certs import LOOPBACK_SANS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"semel:{VERSION}"
CONFIG_FIELDS = {f.name for f in dataclasses.fields(BrokerConfig)}
METRICS_PORT = 9300  # every deployment serves Prometheus metrics here (deploy/README.md, "Metrics")


# --- parsing helpers ------------------------------------------------------------------------
@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str
    stage: int

    def exec_form(self) -> list[str]:
        text = self.args
        if text.startswith("CMD "):  # HEALTHCHECK [options] CMD [...]
            text = text[4:]
        assert text.startswith("["), f"{self.keyword} should use the exec form (JSON array): {self.args}"
        return json.loads(text)


def dockerfile() -> list[Instruction]:
    text = (DEPLOY / "Dockerfile").read_text()
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.strip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    out: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(keyword.upper(), args.strip(), stage))
    return out


def final_stage(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last and i.keyword == keyword]


def healthcheck_command() -> list[str]:
    (hc,) = final_stage(dockerfile(), "HEALTHCHECK")
    _options, _, cmd = hc.args.partition("CMD ")
    return json.loads(cmd)


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def kube_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return objects


def kube(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in kube_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def statefulset() -> dict[str, Any]:
    return kube("StatefulSet")


def broker_container() -> dict[str, Any]:
    (container,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return container


def configmap_config() -> dict[str, Any]:
    cm = kube("ConfigMap", "semel-broker")
    return json.loads(cm["data"]["broker.json"])


def module_of(argv: list[str]) -> str:
    assert argv[:2] == ["python", "-m"], f"expected `python -m MODULE ...`, got {argv}"
    return argv[2]


def assert_runnable_module(name: str) -> None:
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"{name} is not importable"
    if spec.submodule_search_locations is not None:  # a package: needs __main__
        assert importlib.util.find_spec(f"{name}.__main__") is not None, f"{name} has no __main__"


def option_strings() -> set[str]:
    return {s for action in build_arg_parser()._actions for s in action.option_strings}


def config_from(argv: list[str], mounts: dict[str, Path], hostname: str | None = None,
                monkeypatch: pytest.MonkeyPatch | None = None) -> BrokerConfig:
    """`BrokerConfig.from_args(argv)` with container paths mapped to the repository files mounted there."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in mounts:
            args[i] = str(mounts[arg])
    if hostname is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(broker_process.socket, "gethostname", lambda: hostname)
    try:
        return BrokerConfig.from_args(args)
    except SystemExit as exc:  # argparse's ap.error: the broker would refuse to start
        raise AssertionError(f"the broker refuses {argv}: exit {exc.code}") from exc


def json_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((DEPLOY / "three-hosts").glob("*.json")):
        yield str(path.relative_to(REPO)), json.loads(path.read_text())
    yield "deploy/compose/cluster.json", json.loads((DEPLOY / "compose" / "cluster.json").read_text())
    yield "deploy/kubernetes/configmap.yaml", configmap_config()


# --- the JSON configs -------------------------------------------------------------------------
def test_every_json_config_key_is_a_broker_config_field() -> None:
    for where, config in json_configs():
        unknown = set(config) - CONFIG_FIELDS
        assert not unknown, f"{where}: {sorted(unknown)} are not BrokerConfig fields"
        for voter in config.get("voters", []):
            parse_voter(voter)


def test_every_deployment_uses_the_same_data_dir_and_ports() -> None:
    data_dirs = {config["data_dir"] for _, config in json_configs()}
    assert data_dirs == {"/var/lib/semel"}
    for where, config in json_configs():
        assert config["listen_host"] == "0.0.0.0", where  # reachable from other hosts
        assert config["listen_port"] == 9092, where
        assert {split_address(v.split("@")[1])[1] for v in config["voters"]} == {19092}, where
        assert split_address(config["metrics_listen"]) == ("0.0.0.0", METRICS_PORT), where


# --- Dockerfile -------------------------------------------------------------------------------
def test_dockerfile_is_python_311_slim_and_runs_as_a_non_root_user() -> None:
    instructions = dockerfile()
    assert [i.args.split()[0] for i in instructions if i.keyword == "FROM"] == ["python:3.11-slim"] * 2
    (user,) = final_stage(instructions, "USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    runs = " ".join(i.args for i in final_stage(instructions, "RUN"))
    assert f"useradd --system --uid {uid} --gid {gid}" in runs and f"groupadd --system --gid {gid}" in runs


def test_dockerfile_copies_every_package_source_that_exists() -> None:
    copies = [i.args.split() for i in dockerfile() if i.keyword == "COPY" and not i.args.startswith("--from")]
    sources = {src.rstrip("/") for args in copies for src in args[:-1]}
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
    package_roots = {d.split("/")[0] for d in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    assert package_roots <= sources, f"the image misses package sources {sorted(package_roots - sources)}"
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= sources


def test_dockerfile_volume_ports_entrypoint_and_healthcheck_match_the_broker() -> None:
    instructions = dockerfile()
    config = json.loads((DEPLOY / "compose" / "cluster.json").read_text())
    (volume,) = final_stage(instructions, "VOLUME")
    assert volume.exec_form() == [config["data_dir"]]
    (expose,) = final_stage(instructions, "EXPOSE")
    raft_port = split_address(parse_voter(config["voters"][0]).raft_address)[1]
    metrics_port = split_address(config["metrics_listen"])[1]
    assert sorted(int(p) for p in expose.args.split()) == sorted([config["listen_port"], raft_port, metrics_port])

    (entrypoint,) = final_stage(instructions, "ENTRYPOINT")
    assert module_of(entrypoint.exec_form()) == "semel.cluster.broker"
    assert_runnable_module("semel.cluster.broker")
    (cmd,) = final_stage(instructions, "CMD")
    build_arg_parser().parse_args(cmd.exec_form())  # exits (fails the test) on an unknown flag
    assert cmd.exec_form() == ["--config", "/etc/semel/broker.json"]

    probe = healthcheck_command()
    assert_runnable_module(module_of(probe))
    assert module_of(probe) == health_probe.__name__
    parsed = health_probe.build_parser().parse_args(probe[3:])
    host, port = split_address(parsed.address)
    assert host == "127.0.0.1" and port == config["listen_port"]
    (stop,) = final_stage(instructions, "STOPSIGNAL")
    assert stop.args == "SIGTERM"


@pytest.mark.slow
def test_dockerfile_sources_build_a_wheel_with_every_module(tmp_path: Path) -> None:
    """What `pip wheel .` makes of exactly the Dockerfile's COPY set has every module of the package."""
    build_stage = [i for i in dockerfile() if i.stage == 0 and i.keyword == "COPY"]
    context = tmp_path / "context"
    context.mkdir()
    for copy in build_stage:
        for src in copy.args.split()[:-1]:
            source = REPO / src
            if source.is_dir():
                shutil.copytree(source, context / src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(source, context / src)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--wheel-dir", str(wheels), str(context)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = wheels.glob("semel-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n for n in zf.namelist() if n.endswith(".py")}
    expected = set()
    for package, directory in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for path in (REPO / directory).glob("*.py"):
            expected.add(f"{package.replace('.', '/')}/{path.name}")
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        expected.add(f"{package.replace('.', '/')}/__init__.py")
    assert expected <= in_wheel, sorted(expected - in_wheel)
    assert "semel/cluster/broker/health_probe.py" in in_wheel


# --- compose ----------------------------------------------------------------------------------
def compose_mounts(service: dict[str, Any]) -> tuple[dict[str, Path], dict[str, str]]:
    """(container path -> repository file for bind mounts, container path -> named volume)."""
    binds: dict[str, Path] = {}
    named: dict[str, str] = {}
    for spec in service["volumes"]:
        source, target, *_mode = spec.split(":")
        if source.startswith("."):
            binds[target] = (DEPLOY / source).resolve()
        else:
            named[target] = source
    return binds, named


def test_compose_services_are_brokers_the_broker_accepts() -> None:
    doc = compose()
    services = doc["services"]
    voters = None
    assert len(services) == 3
    for name, service in services.items():
        assert service["image"] == IMAGE
        assert (REPO / service["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert (DEPLOY / service["build"]["context"]).resolve() == REPO
        assert service["hostname"] == name and service["stop_signal"] == "SIGTERM"
        binds, named = compose_mounts(service)
        for path in binds.values():
            assert path.is_file(), f"{name}: bind mount {path} does not exist"
        config = config_from(service["command"], binds)
        assert name == f"semel-{config.broker_id}"
        assert (config.advertised_host, config.advertised_port) == (name, config.listen_port)
        assert config.raft_address is not None and split_address(config.raft_address)[0] == name
        assert f"{config.broker_id}@{config.raft_address}@{name}:{config.listen_port}" in config.voters
        assert named == {config.data_dir: f"{name}-data"}
        assert f"{name}-data" in doc["volumes"]
        assert set(service["networks"]) <= set(doc["networks"])
        assert voters is None or config.voters == voters, "every broker must list the same voters"
        voters = config.voters
    assert voters is not None and sorted(parse_voter(v).node_id for v in voters) == [1, 2, 3]
    assert {f"semel-{parse_voter(v).node_id}" for v in voters} == set(services)


def test_compose_publishes_no_raft_port() -> None:
    for name, service in compose()["services"].items():
        assert "19092" not in json.dumps(service.get("ports", [])), f"{name} publishes the Raft port"


# --- Kubernetes -------------------------------------------------------------------------------
def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args; an undefined variable fails the test."""
    def value(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not defined in the container's env"
        return env[match.group(1)]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, text)


def pod_env(container: dict[str, Any], pod_name: str, namespace: str) -> dict[str, str]:
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def pods() -> Iterator[tuple[int, str]]:
    spec = statefulset()["spec"]
    start = spec.get("ordinals", {}).get("start", 0)
    for ordinal in range(start, start + spec["replicas"]):
        yield ordinal, f"{statefulset()['metadata']['name']}-{ordinal}"


def config_mounts(tmp_path: Path) -> dict[str, Path]:
    """Where the ConfigMap's files appear in the container -> the same files written to tmp_path."""
    container = broker_container()
    volumes = {v["name"]: v for v in statefulset()["spec"]["template"]["spec"]["volumes"]}
    out = {}
    for mount in container["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        if "configMap" not in volume:
            continue
        data = kube("ConfigMap", volume["configMap"]["name"])["data"]
        for item in volume["configMap"]["items"]:
            assert item["key"] in data, f"ConfigMap has no key {item['key']}"
            local = tmp_path / item["path"]
            local.write_text(data[item["key"]])
            out[f"{mount['mountPath']}/{item['path']}"] = local
    return out


def test_every_pod_is_a_broker_the_broker_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sts = statefulset()
    namespace = sts["metadata"]["namespace"]
    headless = kube("Service", sts["spec"]["serviceName"])
    container = broker_container()
    assert container["image"] == IMAGE
    assert "command" not in container, "the image's ENTRYPOINT runs the broker; the manifest gives args"
    mounts = config_mounts(tmp_path)
    seen_ids = []
    for ordinal, pod_name in pods():
        env = pod_env(container, pod_name, namespace)
        argv = [expand(arg, env) for arg in container["args"]]
        config = config_from(argv, mounts, hostname=pod_name, monkeypatch=monkeypatch)
        dns = f"{pod_name}.{headless['metadata']['name']}.{namespace}.svc.cluster.local"
        assert config.broker_id == ordinal
        assert config.raft_address == f"{dns}:19092"
        assert (config.advertised_host, config.advertised_port) == (dns, config.listen_port)
        (mine,) = [v for v in config.voter_specs() if v.node_id == ordinal]
        assert (mine.raft_address, mine.rpc_address) == (config.raft_address, f"{dns}:{config.listen_port}")
        seen_ids.append(config.broker_id)
    voter_ids = sorted(parse_voter(v).node_id for v in configmap_config()["voters"])
    assert seen_ids == voter_ids, "every voter must be a pod of the StatefulSet, and every pod a voter"
    assert len(voter_ids) % 2 == 1


def test_statefulset_starts_pods_in_parallel_and_survives_one_disruption() -> None:
    spec = statefulset()["spec"]
    # A broker is Ready only with a metadata quorum: OrderedReady would wait for semel-1 forever.
    assert spec["podManagementPolicy"] == "Parallel"
    voters = len(configmap_config()["voters"])
    pdb = kube("PodDisruptionBudget")["spec"]
    assert voters - pdb["maxUnavailable"] >= voters // 2 + 1, "a drain may not take the quorum away"
    assert pdb["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_ports_services_and_probes_match_the_broker() -> None:
    config = configmap_config()
    raft_port = split_address(parse_voter(config["voters"][0]).raft_address)[1]
    container = broker_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config["listen_port"], "raft": raft_port,
                     "metrics": split_address(config["metrics_listen"])[1]}
    annotations = statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"]) and annotations["prometheus.io/scrape"] == "true"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # The port is TLS-only: Kubernetes' grpc: probes cannot speak TLS, so each probe runs the
        # broker's health probe module with the CA the broker is configured with.
        assert "grpc" not in container[probe] and "httpGet" not in container[probe], probe
        argv = container[probe]["exec"]["command"]
        assert module_of(argv) == health_probe.__name__
        assert_runnable_module(module_of(argv))
        parsed = health_probe.build_parser().parse_args(argv[3:])  # exits (fails the test) on an unknown flag
        host, port = split_address(parsed.address)
        assert port == config["listen_port"], f"{probe} probes {parsed.address}"
        assert host in LOOPBACK_SANS, f"{probe}: the certificate's SANs must name {host} (deploy/README.md)"
        assert parsed.tls_ca == config["tls_ca"], f"{probe} must trust the CA the broker uses"
        # The probe gives up (--timeout-ms) before Kubernetes kills it, Python's start included.
        assert container[probe]["timeoutSeconds"] * 1000 >= parsed.timeout_ms + 5000, probe
    template_labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    for service in (o for o in kube_objects() if o["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= template_labels.items()
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"], f"{service['metadata']['name']}: {port}"
    headless = kube("Service", statefulset()["spec"]["serviceName"])["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert "raft" not in {p["name"] for p in kube("Service", "semel-bootstrap")["spec"]["ports"]}
    policy = kube("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= template_labels.items()
    raft_rules = [r for r in policy["ingress"] if any(p["port"] == "raft" for p in r["ports"])]
    assert len(raft_rules) == 1 and raft_rules[0]["from"] == [{"podSelector": policy["podSelector"]}]
    for rule in policy["ingress"]:
        assert {p["port"] for p in rule["ports"]} <= set(ports)


def test_volumes_mounts_and_claims_are_consistent(tmp_path: Path) -> None:
    pod = statefulset()["spec"]["template"]["spec"]
    claims = {c["metadata"]["name"]: c for c in statefulset()["spec"]["volumeClaimTemplates"]}
    volumes = {v["name"] for v in pod["volumes"]}
    assert not volumes & set(claims)
    mounts = {m["name"]: m for m in broker_container()["volumeMounts"]}
    for name in mounts:
        assert name in volumes or name in claims, f"volumeMount {name} has no volume"
    (data,) = [m for m in mounts.values() if m["name"] in claims]
    assert data["mountPath"] == configmap_config()["data_dir"]
    claim = claims[data["name"]]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"] and claim["resources"]["requests"]["storage"]
    args = broker_container()["args"]
    assert args[args.index("--config") + 1] in config_mounts(tmp_path)


def test_pod_runs_as_the_image_user() -> None:
    (user,) = final_stage(dockerfile(), "USER")
    uid, _, gid = user.args.partition(":")
    security = statefulset()["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (int(uid), int(gid), int(gid))


def test_every_object_lives_in_the_namespace_the_voters_name() -> None:
    namespace = kube("Namespace")["metadata"]["name"]
    for obj in kube_objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, f"{obj['kind']} {obj['metadata']['name']}"
    for voter in configmap_config()["voters"]:
        host = split_address(parse_voter(voter).raft_address)[0]
        assert host.endswith(f".semel.{namespace}.svc.cluster.local")


def test_tls_is_on_with_its_material_from_a_secret() -> None:
    """The gRPC port serves TLS: broker.json's tls_cert/tls_key/tls_ca are files of the
    semel-tls Secret's volume, mounted where the config says, and the README says how to make
    the certificate and the Secret with the same key names."""
    flags = option_strings()
    assert {"--tls-cert", "--tls-key", "--tls-ca"} <= flags
    fields = {f.name for f in dataclasses.fields(BrokerConfig)}
    config = configmap_config()
    pod = statefulset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_files = {}  # path in the container -> (Secret, key)
    for mount in broker_container()["volumeMounts"]:
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        assert mount.get("readOnly") is True, f"{mount['name']} holds secrets: mount it read-only"
        for item in secret["items"]:
            secret_files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    for key in ("tls_cert", "tls_key", "tls_ca"):
        assert key in fields and key in config, f"broker.json lacks {key}"
        assert config[key] in secret_files, f"{key} {config[key]} is no file of a mounted Secret"
    tls = {secret_files[config[k]] for k in ("tls_cert", "tls_key", "tls_ca")}
    assert {name for name, _ in tls} == {"semel-tls"}
    readme = (DEPLOY / "README.md").read_text()
    text = (DEPLOY / "kubernetes" / "statefulset.yaml").read_text()
    for _, key in tls:  # the commands that create the Secret use exactly the keys mounted
        assert f"--from-file={key}=" in readme and f"--from-file={key}=" in text, key
    assert "--host localhost" in readme, "the probes reach localhost: the certificate must name it"
    assert "## Security" in readme


# --- the metrics endpoint's scheme and credentials ---------------------------------------------
def scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yaml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_each_deployment_with_the_scheme_and_credentials_it_serves() -> None:
    """A broker with tls_cert serves HTTPS metrics and one with metrics_user asks for basic
    auth (process.py): the scrape jobs, the pod annotations, the mounted password Secret and the
    README say the same, so no job scrapes http:// from an HTTPS endpoint or the reverse."""
    jobs = scrape_jobs()
    config = configmap_config()
    assert config["tls_cert"] and config["metrics_user"], "Kubernetes: HTTPS metrics with basic auth"
    kube_job = jobs["semel-kubernetes"]
    assert kube_job["scheme"] == "https"
    assert kube_job["basic_auth"]["username"] == config["metrics_user"]
    assert kube_job["basic_auth"]["password_file"] and kube_job["tls_config"]["ca_file"]
    server_name = kube_job["tls_config"]["server_name"]
    readme = (DEPLOY / "README.md").read_text()
    assert server_name.endswith(".semel.semel.svc.cluster.local") and "'*.semel.semel.svc.cluster.local'" in readme
    annotations = statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == kube_job["scheme"]
    keep = {r["source_labels"][0]: r["regex"] for r in kube_job["relabel_configs"] if r.get("action") == "keep"}
    assert keep["__meta_kubernetes_pod_container_port_name"] == "metrics"
    assert "metrics" in {p["name"] for p in broker_container()["ports"]}
    # the password file is the key `password` of the Secret semel-metrics, mounted read-only
    pod = statefulset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in broker_container()["volumeMounts"]
                if config["metrics_password_file"].startswith(m["mountPath"] + "/")]
    secret = volumes[mount["name"]]["secret"]
    assert mount["readOnly"] and secret["secretName"] == "semel-metrics"
    assert [f"{mount['mountPath']}/{i['path']}" for i in secret["items"]] == [config["metrics_password_file"]]
    (item,) = secret["items"]
    for text in (readme, (DEPLOY / "kubernetes" / "statefulset.yaml").read_text()):
        assert "create secret generic semel-metrics" in text and f"--from-file={item['key']}=" in text
    # three hosts and compose run without TLS: their job is plain http, without credentials
    for where, other in json_configs():
        if where.startswith("deploy/kubernetes"):
            continue
        assert not other.get("tls_cert") and not other.get("metrics_user"), where
    plain = jobs["semel-three-hosts"]
    assert plain["scheme"] == "http" and "basic_auth" not in plain
    hosts = {f"{split_address(parse_voter(v).rpc_address)[0]}:{METRICS_PORT}"
             for _, c in json_configs() if c.get("raft_address") for v in c["voters"]}
    assert set(plain["static_configs"][0]["targets"]) == hosts


# --- systemd ---------------------------------------------------------------------------------
def test_systemd_unit_runs_the_broker_with_flags_it_knows() -> None:
    unit = (DEPLOY / "semel-broker.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert argv[1:3] == ["-m", "semel.cluster.broker"]
    parsed = build_arg_parser().parse_args(argv[3:])
    assert parsed.config == "/etc/semel/broker.json"


# --- the metadata Raft secret -------------------------------------------------------------------
def checked_secret(config: BrokerConfig, environ: dict[str, str], files: dict[str, Path]) -> bytes | None:
    """What the broker's start-up check (`metadata_raft_secret`) makes of `config`, with the
    container's secret file paths mapped to local files."""
    local = dataclasses.replace(config, raft_secret_file=str(files.get(config.raft_secret_file,
                                                                       config.raft_secret_file)))
    return local.metadata_raft_secret(environ)


def test_every_deployment_needs_a_raft_secret_and_provides_one(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every voter in deploy/ binds a non-loopback Raft address: without its secret the broker
    refuses to start; with what the deployment provides it starts."""
    secret = tmp_path / "raft-secret"
    secret.write_text("a-secret-of-at-least-sixteen-bytes\n")
    secret.chmod(0o600)

    # three hosts: a file the operator installs (README), named in each JSON config
    for where, config_json in json_configs():
        if "raft_address" not in config_json:
            continue
        config = BrokerConfig(**{**config_json, "voters": tuple(config_json["voters"])})
        assert config.raft_secret_file == "/etc/semel/raft-secret", where
        with pytest.raises(ValueError, match="not loopback"):
            checked_secret(dataclasses.replace(config, raft_secret_file=""), {}, {})
        assert checked_secret(config, {}, {config.raft_secret_file: secret}), where

    # compose: SEMEL_RAFT_SECRET from the environment of `docker compose`, required there
    for name, service in compose()["services"].items():
        value = service["environment"]["SEMEL_RAFT_SECRET"]
        assert re.fullmatch(r"\$\{SEMEL_RAFT_SECRET:\?[^}]+\}", value), f"{name}: compose must require it"
        config = config_from(service["command"], compose_mounts(service)[0])
        with pytest.raises(ValueError, match="not loopback"):
            checked_secret(config, {}, {})
        assert checked_secret(config, {"SEMEL_RAFT_SECRET": secret.read_text()}, {})

    # Kubernetes: the Secret semel-raft mounted where broker.json's raft_secret_file points
    sts = statefulset()
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    container = broker_container()
    secret_file = configmap_config()["raft_secret_file"]
    (mount,) = [m for m in container["volumeMounts"] if secret_file.startswith(m["mountPath"] + "/")]
    volume = volumes[mount["name"]]["secret"]
    assert volume["secretName"] == "semel-raft" and volume["defaultMode"] == 0o400 and mount["readOnly"]
    assert [f"{mount['mountPath']}/{item['path']}" for item in volume["items"]] == [secret_file]
    assert not [o for o in kube_objects() if o["kind"] == "Secret"], "no secret value in the repository"
    mounts = config_mounts(tmp_path)
    for _ordinal, pod_name in pods():
        env = pod_env(container, pod_name, sts["metadata"]["namespace"])
        config = config_from([expand(arg, env) for arg in container["args"]], mounts, hostname=pod_name,
                             monkeypatch=monkeypatch)
        with pytest.raises(ValueError, match="not loopback"):
            checked_secret(dataclasses.replace(config, raft_secret_file=""), {}, {})
        assert checked_secret(config, {}, {secret_file: secret})
