"""The deployment manifests under infra/, checked offline: no cluster, no Docker, no network.

- Kubernetes (infra/k8s): every object validates against the Kubernetes OpenAPI schemas bundled in
  kubernetes-validate, in strict mode (an unknown or misspelt field is an error), for the pinned
  Kubernetes version.
- Compose (infra/compose): both files validate against the Compose specification's JSON schema,
  the copy check-jsonschema ships (vendored from compose-spec, Apache-2.0).
- Both: every FLYWHEEL_ variable they set is a real setting, the values load (production refuses
  the placeholder signing key), every command is a flywheel command and every probe path a route.
- Prometheus and Grafana provisioning: they parse and point at what compose runs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from pydantic import BaseModel

from feedback.errors import ConfigError
from feedback.settings import GatewaySettings, SecuritySettings, Settings, WorkerSettings, load_settings
from services.cli.main import app as cli
from services.gateway.app import create_app as create_gateway
from services.worker.app import create_app as create_worker

INFRA = Path(__file__).resolve().parents[2] / "infra"
K8S, COMPOSE = INFRA / "k8s", INFRA / "compose"
KUBERNETES_VERSION = "1.34.0"  # the schemas the manifests are held to (kustomization.yaml says so)
REAL_KEY = "0123456789abcdef" * 4  # stands for a key an operator generated


def k8s_objects() -> list[dict[str, Any]]:
    """Every object of the manifests kustomization.yaml lists, in its order."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def containers() -> Iterator[dict[str, Any]]:
    """Every container of every workload (Deployment, StatefulSet, Job)."""
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield from obj["spec"]["template"]["spec"]["containers"]


def compose_file(name: str = "compose.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / name).read_text())
    return loaded


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a compose env file (comments and blank lines skipped)."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def compose_env(service: str) -> dict[str, str]:
    """The environment compose gives ``service``: its env files, then its own variables."""
    spec = compose_file()["services"][service]
    files = spec.get("env_file", [])
    env: dict[str, str] = {}
    for name in [files] if isinstance(files, str) else files:
        env |= env_file(COMPOSE / name)
    return env | {key: str(value) for key, value in spec.get("environment", {}).items()}


def setting(variable: str) -> Any:
    """The default of the setting that ``variable`` (FLYWHEEL_SECTION__FIELD) sets; KeyError when none."""
    model: type[BaseModel] = Settings
    *sections, last = variable.removeprefix("FLYWHEEL_").lower().split("__")
    for section in sections:
        annotation = model.model_fields[section].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise KeyError(variable)  # a section named by a field that is not one
        model = annotation
    return model.model_fields[last].get_default(call_default_factory=True)


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """load_settings with exactly ``env`` as the FLYWHEEL_ environment."""
    for name in [n for n in os.environ if n.startswith("FLYWHEEL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def is_command(args: list[str]) -> bool:
    """Whether ``args`` begins with a flywheel command (``topics create``: a group and its command)."""
    command: Any = typer.main.get_command(cli)
    for arg in args:
        if not hasattr(command, "commands"):
            return True
        if arg not in command.commands:
            return False
        command = command.commands[arg]
    return not hasattr(command, "commands")


def route_paths() -> dict[str, set[str]]:
    """The paths each service's app publishes in its OpenAPI schema (the apps are built, not started)."""
    return {"gateway": set(create_gateway().openapi()["paths"]), "worker": set(create_worker().openapi()["paths"])}


# Kubernetes


@pytest.mark.parametrize("obj", k8s_objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_kubernetes_object_validates_against_the_pinned_schemas(obj: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True) == "1.34"


def test_the_kubernetes_validation_refuses_a_misspelt_field() -> None:
    deployment = k8s_object("Deployment", "flywheel-gateway")
    misspelt = deployment | {"spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="'replica' was unexpected"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_and_names_the_image_the_workloads_run() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    (image,) = kustomization["images"]
    assert {c["image"] for c in containers()} == {f"{image['name']}:{image['newTag']}"}


def test_gateways_two_replicas_one_gpu_each_probed_on_readyz_and_healthz() -> None:
    deployment = k8s_object("Deployment", "flywheel-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["args"] == ["gateway"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"name": "http", "containerPort": GatewaySettings().port}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FLYWHEEL_MODEL__DEVICE"] == "cuda"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["FLYWHEEL_GATEWAY__WAL__DIR"] in mounts
    assert k8s_object("PodDisruptionBudget", "flywheel-gateway")["spec"]["minAvailable"] == 1


def test_one_worker_whose_volume_holds_the_duckdb_file_and_the_lake() -> None:
    stateful = k8s_object("StatefulSet", "flywheel-worker")
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    (claim,) = stateful["spec"]["volumeClaimTemplates"]
    assert stateful["spec"]["replicas"] == 1
    assert container["args"] == ["worker"]
    assert container["ports"] == [{"name": "http", "containerPort": WorkerSettings().port}]
    (data,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    settings = k8s_object("ConfigMap", "flywheel-settings")["data"]
    for path in ("FLYWHEEL_DUCKDB__PATH", "FLYWHEEL_WORKER__LAKE_DIR", "FLYWHEEL_REFRESH__WORK_DIR"):
        assert Path(settings[path]).is_relative_to(data), path
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    registry = k8s_object("PersistentVolumeClaim", "flywheel-registry")
    assert registry["spec"]["accessModes"] == ["ReadWriteMany"]  # the worker writes, gateways on other nodes read


def test_workloads_run_flywheel_commands_and_probe_routes_the_apps_serve() -> None:
    paths = route_paths()
    for container in containers():
        assert is_command(container["args"]), container["args"]
        served = paths.get(container["args"][0], set())
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["path"] in served, (container["name"], probe)


def test_every_flywheel_variable_of_the_manifests_is_a_setting() -> None:
    settings = k8s_object("ConfigMap", "flywheel-settings")["data"]
    secret = k8s_object("Secret", "flywheel-secrets")["stringData"]
    own = [e["name"] for c in containers() for e in c.get("env", [])]
    for variable in [*settings, *secret, *own]:
        assert variable.startswith("FLYWHEEL_"), variable
        setting(variable)  # KeyError names a variable that sets nothing
    with pytest.raises(KeyError):
        setting("FLYWHEEL_KAFKA__BOOTSTRAP_SERVER")


def test_production_refuses_the_placeholder_secret_and_loads_with_a_real_one(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = k8s_object("ConfigMap", "flywheel-settings")["data"]
    secret = k8s_object("Secret", "flywheel-secrets")["stringData"]
    assert secret["FLYWHEEL_SECURITY__SIGNING_KEY"] == SecuritySettings().signing_key
    with pytest.raises(ConfigError, match=r"security.signing_key: must be set in production"):
        settings_from(settings | secret, monkeypatch)
    (gateway,) = k8s_object("Deployment", "flywheel-gateway")["spec"]["template"]["spec"]["containers"]
    own = {e["name"]: e["value"] for e in gateway["env"]}
    loaded = settings_from(settings | own | {"FLYWHEEL_SECURITY__SIGNING_KEY": REAL_KEY}, monkeypatch)
    assert loaded.security.environment == "production"
    assert loaded.kafka.topics.replication_factor == 3
    assert loaded.kafka.topics.partitions == 6
    assert loaded.gateway.host == "0.0.0.0"
    assert loaded.model.device == "cuda"
    assert loaded.model.dtype == "bfloat16"
    assert str(loaded.duckdb.path) == "/var/lib/flywheel/data/flywheel.duckdb"


# Compose


def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text())
    return schema


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_validate_against_the_compose_specification(name: str) -> None:
    schema = compose_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(compose_file(name))]
    assert errors == []


def test_the_compose_validation_refuses_a_misspelt_field() -> None:
    compose = compose_file()
    compose["services"]["worker"]["restart_policy"] = "always"
    errors = [error.message for error in jsonschema.Draft202012Validator(compose_schema()).iter_errors(compose)]
    assert errors == ["Unevaluated properties are not allowed ('restart_policy' was unexpected)"]


def test_compose_runs_three_kafka_nodes_two_gateways_and_one_worker() -> None:
    services = compose_file()["services"]
    kafka = {name: s["environment"] for name, s in services.items() if name.startswith("kafka-")}
    assert sorted(kafka) == ["kafka-1", "kafka-2", "kafka-3"]
    for env in kafka.values():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == (3, 2)
    assert sorted(env["KAFKA_NODE_ID"] for env in kafka.values()) == [1, 2, 3]
    pom = (INFRA / "kafka" / "pom.xml").read_text()
    (version,) = re.findall(r"<kafka.version>(.+)</kafka.version>", pom)
    assert {s["image"] for name, s in services.items() if name in kafka} == {f"apache/kafka:{version}"}
    assert [name for name, s in services.items() if s.get("command") == ["gateway"]] == ["gateway-1", "gateway-2"]
    assert [name for name, s in services.items() if s.get("command") == ["worker"]] == ["worker"]
    wal = [s["volumes"][0] for name, s in services.items() if s.get("command") == ["gateway"]]
    assert wal == ["wal-1:/var/lib/flywheel/wal", "wal-2:/var/lib/flywheel/wal"]  # a log of its own each


def test_compose_needs_a_signing_key_and_its_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in ("topics", "gateway-1", "gateway-2", "worker", "cli"):
        env = compose_env(service)
        assert env["FLYWHEEL_SECURITY__SIGNING_KEY"].startswith("${FLYWHEEL_SIGNING_KEY:?"), service
        for variable in env:
            setting(variable)
        loaded = settings_from(env | {"FLYWHEEL_SECURITY__SIGNING_KEY": REAL_KEY}, monkeypatch)
        assert loaded.security.environment == "production"
        assert loaded.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert (
        settings_from(compose_env("gateway-1") | {"FLYWHEEL_SECURITY__SIGNING_KEY": REAL_KEY}, monkeypatch).gateway.host
        == "0.0.0.0"
    )
    gpu = compose_file("compose.gpu.yaml")["services"]
    for service in gpu.values():
        for variable in service["environment"]:
            setting(variable)


def test_compose_commands_are_flywheel_commands_and_its_files_exist() -> None:
    for name, service in compose_file()["services"].items():
        if service.get("image", "").startswith("${FLYWHEEL_IMAGE"):
            assert name == "cli" or is_command(service["command"]), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), volume


# Prometheus and Grafana


def test_prometheus_scrapes_both_gateways_and_the_worker_on_their_metrics_route() -> None:
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: [t for c in job["static_configs"] for t in c["targets"]] for name, job in jobs.items()}
    gateway, worker = GatewaySettings().port, WorkerSettings().port
    assert targets == {
        "flywheel-gateway": [f"gateway-1:{gateway}", f"gateway-2:{gateway}"],
        "flywheel-worker": [f"worker:{worker}"],
    }
    paths = route_paths()
    assert jobs["flywheel-gateway"]["metrics_path"] in paths["gateway"]
    assert jobs["flywheel-worker"]["metrics_path"] in paths["worker"]
    assert (COMPOSE / "prometheus.yml").name in "".join(compose_file()["services"]["prometheus"]["volumes"])


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards_compose_mounts() -> None:
    datasources = yaml.safe_load((INFRA / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    providers = yaml.safe_load((INFRA / "grafana/provisioning/dashboards/flywheel.yaml").read_text())
    assert datasources["apiVersion"] == providers["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert (source["type"], source["uid"], source["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    (provider,) = providers["providers"]
    mounts = dict(v.split(":")[:2] for v in compose_file()["services"]["grafana"]["volumes"])
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
