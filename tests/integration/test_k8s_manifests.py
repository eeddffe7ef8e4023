"""The Kubernetes manifests (deploy/k8s) and the images they run (deploy/Dockerfile*).

Every overlay is rendered with ``kubectl kustomize`` (skipped, saying so, where kubectl is absent)
and validated offline against the Kubernetes 1.32 schemas in strict mode (``kubernetes-validate``);
the custom resources it has no schema for (KEDA's ScaledObject, the Prometheus Operator's
ServiceMonitor) get our own checks. Then what no schema knows: the settings file each overlay
ships is one ``apihelper-serve`` reads (through its own settings loader), the probes and Services
point at the ports those settings open, the termination grace covers preStop plus the drain, every
pod runs unprivileged on a read-only root, and every metric an autoscaler names is one a live
server exports.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apihelper.service.settings import Settings, load_settings
from tests.conftest import Serving
from tests.support import ROOT

K8S = ROOT / "deploy" / "k8s"
# The overlays, and the cpu overlay with the optional queue-depth HPA component.
OVERLAYS = ("cpu", "gpu", "cpu+queue-depth-hpa")
KUBERNETES_VERSION = "1.32.0"
NO_SCHEMA = {"ScaledObject", "ServiceMonitor"}  # CRDs: checked by the tests below instead
# What the server may need after preStop and the streams' grace: the engine's shutdown.
SHUTDOWN_MARGIN_S = 10
# The least time a startup probe gives a model load.
MIN_STARTUP_S = 120

Doc = dict[str, Any]


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed: the overlays are rendered with `kubectl kustomize`")
    return found


_RENDERED: dict[str, list[Doc]] = {}


def render(variant: str) -> list[Doc]:
    """``kubectl kustomize`` of an overlay (``cpu``), or of an overlay with components
    (``cpu+queue-depth-hpa``: what a user's kustomization listing them renders), parsed, once."""
    if variant not in _RENDERED:
        overlay, *components = variant.split("+")
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            relative = Path(os.path.relpath(K8S, root))
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative / "overlays" / overlay)],
                "components": [str(relative / "components" / c) for c in components],
            }
            (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            target = root if components else K8S / "overlays" / overlay
            done = subprocess.run([_kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        _RENDERED[variant] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return copy.deepcopy(_RENDERED[variant])


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def every(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_templates(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]


def server(docs: list[Doc]) -> tuple[Doc, Doc]:
    """The Deployment and its apihelper container."""
    deployment = one(docs, "Deployment", "apihelper")
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "apihelper"]
    return deployment, container


def server_settings(docs: list[Doc], tmp_path: Path) -> Settings:
    """The Settings the server container would start with: its args, its literal environment and
    the settings file mounted from the ConfigMap, read by apihelper-serve's own loader."""
    deployment, container = server(docs)
    assert container["command"] == ["apihelper-serve"]
    args = list(container["args"])
    config_path = args[args.index("--config") + 1]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"].rstrip("/") + "/")]
    config_map = one(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    key = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
    local = tmp_path / key
    local.write_text(config_map["data"][key])
    args[args.index("--config") + 1] = str(local)
    environ = {e["name"]: e.get("value", "from-a-secret") for e in container.get("env", [])}
    return load_settings(args, environ)


def port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(found)


# ---------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    import kubernetes_validate

    docs = render(overlay)
    unvalidated = set()
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add(doc["kind"])
    assert unvalidated <= NO_SCHEMA, f"no schema for {unvalidated - NO_SCHEMA}"
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy", "Job"} <= kinds
    assert {"ConfigMap", "Secret"} <= kinds
    assert ("HorizontalPodAutoscaler" if overlay.startswith("cpu") else "ScaledObject") in kinds


def test_the_schema_check_is_strict() -> None:
    """A misspelt field fails validation: the test above can fail."""
    import kubernetes_validate

    deployment, container = server(render("cpu"))
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------- our checks


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_ports_probes_and_grace_agree(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    settings = server_settings(docs, tmp_path)
    deployment, container = server(docs)
    pod = deployment["spec"]["template"]["spec"]

    # The server listens where the pod's ports and probes say, on every interface.
    assert settings.host == settings.metrics_host == "0.0.0.0"
    assert port_number(container, "grpc") == settings.port
    assert port_number(container, "http") == settings.http_port
    assert port_number(container, "metrics") == settings.metrics_port
    probes = {name: container[f"{name}Probe"]["httpGet"] for name in ("startup", "readiness", "liveness")}
    assert probes["readiness"]["path"] == "/readyz"
    assert probes["liveness"]["path"] == probes["startup"]["path"] == "/healthz"
    for probe in probes.values():
        assert port_number(container, probe["port"]) == settings.http_port
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= MIN_STARTUP_S

    # A rollout drains: the kubelet waits for preStop, then the streams' grace, then the engine.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert (
        pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + settings.shutdown_grace_seconds + SHUTDOWN_MARGIN_S
    )

    # The token file and the Milvus token come from the Secret the render holds.
    secrets = {s["metadata"]["name"]: s for s in every(docs, "Secret")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (token_mount,) = [
        m for m in container["volumeMounts"] if settings.auth_token_file.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    secret_volume = volumes[token_mount["name"]]["secret"]
    assert secret_volume["secretName"] in secrets
    assert settings.auth_token_file.rsplit("/", 1)[1] in {i["path"] for i in secret_volume["items"]}
    (milvus_token,) = [e for e in container["env"] if e["name"] == "APIHELPER_MILVUS_TOKEN"]
    ref = milvus_token["valueFrom"]["secretKeyRef"]
    assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["data"]

    # The ingest Job writes to the Milvus the server reads.
    job = one(docs, "Job", "apihelper-ingest")
    (ingest,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in ingest["env"]}
    assert "--milvus-uri=$(MILVUS_URI)" in ingest["args"]
    assert env["MILVUS_URI"]["value"] == settings.milvus_uri

    if overlay == "gpu":
        assert settings.engine == "tensorrt_llm" and settings.device == "cuda"
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        (engines,) = [m for m in container["volumeMounts"] if settings.model.startswith(m["mountPath"] + "/")]
        assert engines["readOnly"] and "persistentVolumeClaim" in volumes[engines["name"]]
    else:
        assert settings.engine == "openvino" and settings.device == "cpu"
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_unprivileged_on_a_read_only_root(overlay: str) -> None:
    for where, template in pod_templates(render(overlay)):
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        mounts_tmp = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            # HOME (the caches) is a writable emptyDir.
            home = {e["name"]: e.get("value") for e in container["env"]}["HOME"]
            assert any(m["mountPath"] == home and m["name"] in mounts_tmp for m in container["volumeMounts"]), where
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["memory"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_budget_and_policy_select_the_server_pods(overlay: str) -> None:
    docs = render(overlay)
    deployment, container = server(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    container_ports = {p["name"] for p in container["ports"]}

    grpc_service = one(docs, "Service", "apihelper-grpc")
    assert grpc_service["spec"]["clusterIP"] == "None"  # headless: clients balance per call
    http_service = one(docs, "Service", "apihelper-http")
    for service in (grpc_service, http_service):
        assert matches(service["spec"]["selector"], labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert [p["targetPort"] for p in grpc_service["spec"]["ports"]] == ["grpc"]

    budget = one(docs, "PodDisruptionBudget")
    assert matches(budget["spec"]["selector"]["matchLabels"], labels)

    policy = one(docs, "NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    for rule in policy["spec"]["ingress"]:
        assert rule["from"] and {p["port"] for p in rule["ports"]} <= container_ports
    for rule in policy["spec"]["egress"]:
        assert rule["to"] and rule["ports"]  # nowhere but where named
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {19530, 53}  # Milvus, and DNS to find it

    # ServiceMonitor (a CRD: no schema): it scrapes /metrics on a port of a Service that exists.
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (scraped,) = [
        s
        for s in every(docs, "Service")
        if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        (port,) = [p for p in scraped["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert port["targetPort"] == "metrics"


def autoscaler_metrics(overlay: str) -> set[str]:
    """The service metrics the overlay's autoscalers name (Resource metrics are the kubelet's),
    after checking each autoscaler's shape: KEDA's ScaledObject is a CRD with no schema here."""
    docs = render(overlay)
    deployment, container = server(docs)
    names: set[str] = set()
    for hpa in every(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "apihelper"}
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                # Utilization is relative to the request: the container must make one.
                assert metric["resource"]["name"] in container["resources"]["requests"]
            else:
                names.add(metric[metric["type"][0].lower() + metric["type"][1:]]["metric"]["name"])
    for scaled in every(docs, "ScaledObject"):
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "prometheus"
            float(trigger["metadata"]["threshold"])
            assert trigger["metadata"]["serverAddress"].startswith("http")
            found = set(re.findall(r"\b(apihelper_[a-z0-9_]+)", trigger["metadata"]["query"]))
            assert found, trigger["metadata"]["query"]
            names |= found
    return names


def test_autoscalers_scale_on_the_engine_queue() -> None:
    assert autoscaler_metrics("gpu") == {"apihelper_engine_waiting_requests"}
    assert autoscaler_metrics("cpu") == set()  # CPU use: the kubelet's, nothing of ours
    assert autoscaler_metrics("cpu+queue-depth-hpa") == {"apihelper_engine_waiting_requests"}


@pytest.mark.transformers5
def test_every_metric_an_autoscaler_names_is_exported_by_a_live_server(serving: Serving) -> None:
    named = set().union(*(autoscaler_metrics(variant) for variant in OVERLAYS))
    with urllib.request.urlopen(f"http://127.0.0.1:{serving.metrics_port}/metrics", timeout=30) as response:
        text = response.read().decode()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    assert named and named <= exported, named - exported


# ---------------------------------------------------------------------------------- images


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_images_run_unprivileged_with_a_healthcheck(dockerfile: str) -> None:
    lines = (ROOT / "deploy" / dockerfile).read_text().replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    users = [i.split()[1] for i in instructions if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # The uid the manifests run as: files the image owns for its user are owned by the same uid.
    base = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    assert users[-1].split(":")[0] == str(base["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
    (healthcheck,) = [i for i in instructions if i.startswith("HEALTHCHECK ")]
    assert f"127.0.0.1:{Settings().port}" in healthcheck and "health" in healthcheck


# ---------------------------------------------------------------------------------- Backend.AI


def test_backend_ai_model_service_serves_the_settings_it_ships() -> None:
    """deploy/backend.ai: the model definition has the fields Backend.AI requires, starts
    apihelper-serve on the settings file next to it (read by the server's own loader), routes to
    the HTTP port those settings open and health-checks readiness there."""
    import tomllib

    folder = ROOT / "deploy" / "backend.ai"
    (model,) = yaml.safe_load((folder / "model-definition.yaml").read_text())["models"]
    assert model["name"] and model["model_path"].startswith("/")
    service = model["service"]
    command = service["start_command"]
    assert command[0] == "apihelper-serve"
    config = command[command.index("--config") + 1]
    # The settings file is in the model folder, which Backend.AI mounts at model_path.
    assert config.startswith(model["model_path"].rstrip("/") + "/")
    local = folder / config[len(model["model_path"].rstrip("/")) + 1 :]
    settings = load_settings([*command[1 : command.index("--config")], "--config", str(local)], {})
    assert settings.host == "0.0.0.0" and service["port"] == settings.http_port
    assert settings.model.startswith(model["model_path"].rstrip("/") + "/")
    check = service["health_check"]
    assert check["path"] == "/readyz" and check["expected_status_code"] == 200
    assert check["initial_delay"] >= 60 and check["max_wait_time"] > 0
    assert {a["action"] for a in service.get("pre_start_actions", [])} <= {
        "write_file", "write_tempfile", "run_command", "mkdir", "log"
    }  # fmt: skip

    definition = tomllib.loads((folder / "service-definition.toml").read_text())
    environment = definition["custom"]["environment"]
    assert environment["image"] and environment["architecture"] in ("x86_64", "aarch64")
    assert definition["custom"]["resource_slots"]["cpu"] >= 1
