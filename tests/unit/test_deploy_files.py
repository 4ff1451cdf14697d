"""Offline checks of the deployment files: docker-compose.yml, the Dockerfile and deploy/.

Nothing here needs a Docker engine or a cluster. Built-in Kubernetes resources are checked
against the API schemas shipped with kubernetes-validate; Strimzi's KafkaTopic is a CRD the
package cannot know, so its fields are checked by hand. When kubectl is installed, the
kustomize build itself is rendered and checked too.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streams.dev.kafka_dist import KAFKA_VERSION
from streams.kafka.topics import changelog_spec, topic_specs

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
BASE = ROOT / "deploy" / "base"
KUSTOMIZATION = BASE / "kustomization.yaml"
DEPLOY_POLICY = BASE / "policy.yaml"
DEFAULT_POLICY = ROOT / "lifecycle" / "policies" / "default.yaml"
SECRET_EXAMPLE = BASE / "secret.example.yaml"

# Oldest Kubernetes release the manifests target (setHostnameAsFQDN, policy/v1 PDB).
K8S_VERSION = "1.30.0"
BUILTIN_API_VERSIONS = {"v1", "apps/v1", "policy/v1"}

DAY_MS = 24 * 60 * 60 * 1000
TOPICS = {
    "leadflow.events",
    "leadflow.stage-changes",
    "leadflow.history",
    "leadflow.dead-letters",
    "leadflow.policies",
    "leadflow.aliases",
    "leadflow.keys",
    "leadflow-persons-changelog",
}
POM = ROOT / "streams" / "dev" / "kafka" / "pom.xml"


# --------------------------------------------------------------------------- compose


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: dict[str, Any]) -> dict[str, Any]:
    """A service's environment as a dict, whichever of the two compose syntaxes it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def as_argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def effective_command(service: dict[str, Any]) -> list[str]:
    """entrypoint + command, falling back to the Dockerfile for images built here."""
    if "entrypoint" in service:
        entrypoint = as_argv(service["entrypoint"])
    elif "build" in service:
        entrypoint = as_argv(dockerfile_exec_form("ENTRYPOINT"))
    else:
        entrypoint = []
    if "command" in service:
        command = as_argv(service["command"])
    elif "build" in service:
        command = as_argv(dockerfile_exec_form("CMD"))
    else:
        command = []
    return entrypoint + command


def worker_names() -> set[str]:
    return {
        name
        for name, svc in services().items()
        if effective_command(svc)[:2] == ["leadflow", "worker"]
    }


def topic_init_names() -> set[str]:
    return {
        name
        for name, svc in services().items()
        if effective_command(svc)[:3] == ["leadflow", "topics", "create"]
    }


def published_host_ports(service: dict[str, Any]) -> list[str]:
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append(str(port["published"]))
        else:
            # [ip:]host:container[/proto]; a bare container port publishes nothing fixed.
            parts = str(port).split("/")[0].split(":")
            assert len(parts) >= 2, f"port {port!r} has no fixed host port"
            ports.append(parts[-2])
    return ports


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume["target"]))
        else:
            source, target = str(volume).split(":")[:2]
            mounts.append((source, target))
    return mounts


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith(("/", ".", "~", "$"))


def test_kafka_is_apache_kafka_in_kraft_mode_with_a_healthcheck() -> None:
    kafka = services()["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert tag == KAFKA_VERSION, (
        f"docker-compose.yml runs apache/kafka:{tag}; leadflow runs and tests on {KAFKA_VERSION} "
        "(streams/dev/kafka_dist.py KAFKA_VERSION, streams/dev/kafka/pom.xml): keep them equal"
    )

    env = environment(kafka)
    roles = {role.strip() for role in str(env["KAFKA_PROCESS_ROLES"]).split(",")}
    assert roles == {"broker", "controller"}
    assert "KAFKA_NODE_ID" in env
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not [key for key in env if "ZOOKEEPER" in key]
    assert kafka["healthcheck"]["test"]


def test_two_workers_run_leadflow_worker() -> None:
    assert worker_names() == {"worker-1", "worker-2"}


def test_topic_init_runs_once_kafka_is_healthy() -> None:
    (init,) = topic_init_names()
    depends_on = services()[init]["depends_on"]
    assert depends_on["kafka"]["condition"] == "service_healthy"


@pytest.mark.parametrize("worker", ["worker-1", "worker-2"])
def test_workers_start_after_topic_init_completed(worker: str) -> None:
    (init,) = topic_init_names()
    depends_on = services()[worker]["depends_on"]
    assert depends_on[init]["condition"] == "service_completed_successfully"


def test_api_token_always_comes_from_the_host_environment() -> None:
    # `${VAR:?msg}` makes compose refuse to start without it; `${VAR:-default}` would hide a
    # literal token in the default, so it is refused too.
    required = re.compile(r"\$\{LEADFLOW_API_TOKEN:?\?[^}]*\}")
    for name, svc in services().items():
        for key, value in environment(svc).items():
            if "TOKEN" in key.upper():
                assert isinstance(value, str), f"{name}: {key} must be an interpolation"
                assert required.fullmatch(value), f"{name}: {key}={value!r} is not ${{...:?...}}"
    for worker in worker_names():
        assert "LEADFLOW_API_TOKEN" in environment(services()[worker])
        assert "LEADFLOW_MASTER_KEY" in environment(services()[worker])


def test_published_ports_are_distinct_and_workers_publish_the_web_port() -> None:
    all_ports = [port for svc in services().values() for port in published_host_ports(svc)]
    assert len(all_ports) == len(set(all_ports)), f"host port published twice: {all_ports}"
    for worker in worker_names():
        svc = services()[worker]
        web_port = str(environment(svc).get("LEADFLOW_WEB_PORT", "6066"))
        container_ports = [str(p).split(":")[-1].split("/")[0] for p in svc["ports"]]
        assert web_port in container_ports, f"{worker} does not publish its web port"
    assert {p for w in worker_names() for p in published_host_ports(services()[w])} == {
        "6066",
        "6067",
    }


def test_named_volumes_are_declared_and_each_worker_has_its_own_data_dir() -> None:
    declared = set(compose().get("volumes") or {})
    for name, svc in services().items():
        for source, _ in volume_mounts(svc):
            if is_named_volume(source):
                assert source in declared, f"{name}: volume {source!r} is not declared"
    data_volumes = []
    for worker in worker_names():
        svc = services()[worker]
        data_dir = environment(svc)["LEADFLOW_DATA_DIR"]
        (source,) = [src for src, target in volume_mounts(svc) if target == data_dir]
        assert is_named_volume(source)
        data_volumes.append(source)
    assert len(set(data_volumes)) == len(data_volumes), "workers share a RocksDB volume"


# --------------------------------------------------------------------------- Dockerfile


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def dockerfile_last(instruction: str) -> str | None:
    values = [args for name, args in dockerfile_instructions() if name == instruction]
    return values[-1] if values else None


def dockerfile_exec_form(instruction: str) -> list[str] | str | None:
    value = dockerfile_last(instruction)
    if value is not None and value.startswith("["):
        return json.loads(value)
    return value


def test_dockerfile_runs_leadflow_as_a_non_root_user() -> None:
    assert dockerfile_last("FROM") == "python:3.11-slim"
    assert as_argv(dockerfile_exec_form("ENTRYPOINT")) == ["leadflow"]
    assert as_argv(dockerfile_exec_form("CMD")) == ["worker"]
    user = dockerfile_last("USER")
    assert user is not None, "no USER: the image would run as root"
    assert user.split(":")[0] not in {"root", "0"}
    assert "6066" in (dockerfile_last("EXPOSE") or "").split()
    assert any(n == "RUN" and "pip install ." in a for n, a in dockerfile_instructions())


def test_dockerfile_healthcheck_asks_healthz() -> None:
    healthcheck = dockerfile_last("HEALTHCHECK")
    assert healthcheck is not None
    assert "CMD" in healthcheck
    assert "urllib" in healthcheck
    assert "/healthz" in healthcheck


# --------------------------------------------------------------------------- Kubernetes


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def base_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes resource in deploy/base/*.yaml, with the file it came from."""
    skip = {KUSTOMIZATION.name, DEPLOY_POLICY.name}
    documents = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name in skip:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                documents.append((path.name, doc))
    return documents


def resources(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in base_documents() if doc["kind"] == kind]


def doc_id(entry: tuple[str, dict[str, Any]]) -> str:
    filename, doc = entry
    return f"{filename}:{doc['kind']}/{doc['metadata']['name']}"


def validate_builtin(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(str(p) for p in error.caught.absolute_path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.caught.message}")


BUILTIN_DOCS = [e for e in base_documents() if e[1]["apiVersion"] in BUILTIN_API_VERSIONS]


@pytest.mark.parametrize("entry", BUILTIN_DOCS, ids=[doc_id(e) for e in BUILTIN_DOCS])
def test_builtin_resource_matches_the_kubernetes_schema(entry: tuple[str, dict[str, Any]]) -> None:
    validate_builtin(entry[1])


def test_every_resource_is_either_schema_checked_or_a_kafka_topic() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in base_documents()}
    unchecked = {
        (api, kind)
        for api, kind in kinds
        if api not in BUILTIN_API_VERSIONS
        and (api, kind) != ("kafka.strimzi.io/v1beta2", "KafkaTopic")
    }
    assert not unchecked
    expected = {"StatefulSet", "Service", "PodDisruptionBudget", "KafkaTopic", "Secret"}
    assert {kind for _, kind in kinds} == expected


def test_kustomization_lists_files_that_exist_and_leaves_the_secret_out() -> None:
    listed = kustomization()["resources"]
    for name in listed:
        assert (BASE / name).is_file(), f"kustomization lists missing {name}"
    for generator in kustomization().get("configMapGenerator", []):
        for file_spec in generator.get("files", []):
            assert (BASE / file_spec.split("=")[-1]).is_file()
    assert SECRET_EXAMPLE.name not in listed
    # Every other manifest in the base is applied: nothing written and then forgotten.
    manifests = {filename for filename, _ in base_documents()} - {SECRET_EXAMPLE.name}
    assert manifests <= set(listed)
    assert "namespace" not in kustomization()


def generated_literals(name: str) -> dict[str, str]:
    for generator in kustomization().get("configMapGenerator", []):
        if generator["name"] == name:
            return dict(literal.split("=", 1) for literal in generator.get("literals", []))
    raise AssertionError(f"no configMapGenerator named {name}")


def generated_names() -> set[str]:
    return {generator["name"] for generator in kustomization().get("configMapGenerator", [])}


def worker_pod_spec() -> dict[str, Any]:
    (statefulset,) = resources("StatefulSet")
    return statefulset["spec"]["template"]["spec"]


def worker_container() -> dict[str, Any]:
    (container,) = worker_pod_spec()["containers"]
    return container


def container_env() -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in worker_container()["env"]}


def test_statefulset_keeps_rocksdb_on_a_claimed_volume_at_the_data_dir() -> None:
    (statefulset,) = resources("StatefulSet")
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    data_dir = container_env()["LEADFLOW_DATA_DIR"]["value"]
    mounts = [m for m in worker_container()["volumeMounts"] if m["mountPath"] == data_dir]
    assert len(mounts) == 1 and mounts[0]["name"] in claims
    assert statefulset["spec"]["replicas"] >= 2


def test_statefulset_takes_the_api_token_from_the_leadflow_api_secret() -> None:
    ref = container_env()["LEADFLOW_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("leadflow-api", "token")
    (secret,) = resources("Secret")
    assert secret["metadata"]["name"] == ref["name"] and ref["key"] in secret["stringData"]
    for item in worker_container()["env"]:
        if "TOKEN" in item["name"] or "MASTER_KEY" in item["name"]:
            assert "value" not in item, f"{item['name']} is a literal"
    master = container_env()["LEADFLOW_MASTER_KEY"]["valueFrom"]["secretKeyRef"]
    assert master["name"] == ref["name"] and master["key"] in secret["stringData"]


def test_policy_configmap_is_mounted_where_leadflow_policy_points() -> None:
    policy_path = PurePosixPath(container_env()["LEADFLOW_POLICY"]["value"])
    volumes = {v["name"]: v for v in worker_pod_spec()["volumes"]}
    found = []
    for mount in worker_container()["volumeMounts"]:
        source = volumes.get(mount["name"], {}).get("configMap")
        if not source or source["name"] != "leadflow-policy":
            continue
        if "subPath" in mount:
            found.append(PurePosixPath(mount["mountPath"]))
        else:
            for item in source.get("items", []):
                found.append(PurePosixPath(mount["mountPath"]) / item["path"])
    assert found == [policy_path]
    assert "leadflow-policy" in generated_names()


def test_statefulset_env_configmap_is_generated_and_probes_ask_healthz() -> None:
    container = worker_container()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] in generated_names()
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    web_port = int(container_env()["LEADFLOW_WEB_PORT"]["value"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz"
        assert port_names.get(http["port"], http["port"]) == web_port


def test_statefulset_runs_non_root_with_resources() -> None:
    pod, container = worker_pod_spec(), worker_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][section])


def test_services_and_pdb_select_the_worker_pods() -> None:
    (statefulset,) = resources("StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    services_by_name = {s["metadata"]["name"]: s for s in resources("Service")}
    headless = services_by_name[statefulset["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    api = [s for s in services_by_name.values() if s["spec"].get("clusterIP") != "None"]
    assert [s["spec"].get("type", "ClusterIP") for s in api] == ["ClusterIP"]
    for service in services_by_name.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
    (pdb,) = resources("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_kafka_version_is_one_pin_in_pom_and_code() -> None:
    pinned = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert pinned and pinned.group(1) == KAFKA_VERSION, (
        f"streams/dev/kafka/pom.xml pins {pinned and pinned.group(1)}, "
        f"KAFKA_VERSION is {KAFKA_VERSION}"
    )


def test_strimzi_topics_say_what_the_worker_creates() -> None:
    """One source of topic settings: deploy/base/topics.yaml = topic_specs + changelog_spec."""
    partitions = int(generated_literals("leadflow-env")["LEADFLOW_PARTITIONS"])
    deployed = {}
    for topic in resources("KafkaTopic"):
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "leadflow"
        spec = topic["spec"]
        assert spec.get("topicName", topic["metadata"]["name"]) == topic["metadata"]["name"]
        configs = {key: str(value) for key, value in spec["config"].items()}
        deployed[topic["metadata"]["name"]] = (spec["partitions"], spec["replicas"], configs)
    assert set(deployed) == TOPICS
    replication = {replicas for _, replicas, _ in deployed.values()}
    assert len(replication) == 1, f"one replication factor for every topic, not {replication}"
    (rf,) = replication
    expected = {
        s.name: (s.partitions, s.replication, s.configs)
        for s in (*topic_specs(None, partitions, rf), changelog_spec("", partitions, rf))
    }
    for name in sorted(TOPICS):
        assert deployed[name] == expected[name], (
            f"deploy/base/topics.yaml {name}: {deployed[name]}; the worker creates "
            f"{expected[name]} (streams/kafka/topics.py topic_specs)"
        )
    # The design behind the numbers, so a change to topic_specs is a deliberate one.
    assert deployed["leadflow.history"][2]["retention.ms"] == "-1"
    assert int(deployed["leadflow.dead-letters"][2]["retention.ms"]) >= 90 * DAY_MS
    assert deployed["leadflow.policies"][2]["cleanup.policy"] == "compact"
    assert deployed["leadflow-persons-changelog"][2]["cleanup.policy"] == "compact"


def test_deployed_policy_is_the_default_policy() -> None:
    # kustomize may not load files outside deploy/base, so the policy is a copy; this keeps
    # it from drifting. Fix with: cp lifecycle/policies/default.yaml deploy/base/policy.yaml
    assert DEFAULT_POLICY.is_file(), f"{DEFAULT_POLICY.relative_to(ROOT)} is missing"
    assert DEPLOY_POLICY.read_bytes() == DEFAULT_POLICY.read_bytes(), (
        "deploy/base/policy.yaml differs from lifecycle/policies/default.yaml; "
        "cp lifecycle/policies/default.yaml deploy/base/policy.yaml"
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_build_renders_valid_resources() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc is not None]
    for doc in docs:
        if doc["apiVersion"] in BUILTIN_API_VERSIONS:
            validate_builtin(doc)
    assert not [doc for doc in docs if doc["kind"] == "Secret"]

    configmaps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    (policy,) = [cm for name, cm in configmaps.items() if name.startswith("leadflow-policy-")]
    assert policy["data"]["policy.yaml"] == DEPLOY_POLICY.read_text()
    (statefulset,) = [doc for doc in docs if doc["kind"] == "StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    # kustomize rewrote the references to the generated (hash-suffixed) names.
    referenced = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    referenced |= {
        s["configMapRef"]["name"] for s in pod["containers"][0]["envFrom"] if "configMapRef" in s
    }
    assert referenced <= set(configmaps)
