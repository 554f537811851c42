"""kube/: offline validation of the Kubernetes manifests against the schemas, the naming contract and the code.

No cluster here: objects pass ``kubernetes-validate --strict`` (misspelled fields fail), the PodMonitor passes
the prometheus-operator model with extra fields forbidden, and everything a schema cannot see is checked
against the services' own code: health names a probe asks for are the ones the real servers register,
env names are the ones the servers read, dashboard queries name metrics and labels ServiceMetrics exports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2

from tests.deploy.manifests import (
    REPO,
    Manifest,
    containers,
    index,
    kubectl_files,
    load_file,
    load_folder,
    pod_templates,
    selects,
    template_labels,
    walk,
)

KUBE = REPO / "kube"
CELL = KUBE / "cell"
MONITORING = KUBE / "monitoring"
DASHBOARD_JSON = MONITORING / "dashboards" / "robomesh.json"
K8S_VERSIONS = ("1.33.0", "1.37.0")  # a current release and the newest schemas kubernetes-validate ships
NAMESPACE = "robodemo"

REGISTRY = "registry.robodemo.lan:5000"
TAG = "0.1.0"
IMAGES = {  # image name -> the service module its container runs
    "objectdetection": "objectdetection",
    "facedetection": "facedetection",
    "yolodetection": "yolodetection",
    "yolodetection-cuda": "yolodetection",
    "yolodetection-openvino": "yolodetection",
    "robotclient": None,
}
PORTS = {"objectdetection": (50051, 9091), "facedetection": (50053, 9093), "yolodetection": (50055, 9095)}
HEALTH_NAMES = {
    "objectdetection": "robomesh.detection.v1.ObjectDetection",
    "facedetection": "robomesh.detection.v1.FaceDetection",
    "yolodetection": "robomesh.detection.v1.YoloDetection",
}
# Defaults of the servers (README "Configuration"), used when a manifest leaves the variable unset.
DEFAULT_GRACE_S, DEFAULT_SHUTDOWN_DELAY_S = 10.0, 0.0
# Variables set in manifests for libraries, not read by robomesh itself.
FOREIGN_ENV = {"CUDA_CACHE_PATH"}
# Metrics the dashboard may use that robomesh does not export (kube-state-metrics).
FOREIGN_METRICS = {"kube_pod_info": {"namespace", "pod", "node"}, "kube_pod_labels": {"namespace", "pod"}}
SECRET_KEY = re.compile(r"(?i)(pass(word|wd)?|secret|token|api[-_]?key|credential|private[-_]?key)")


# ----------------------------------------------------------------------------- loading


def all_kube_files() -> list[Path]:
    return sorted(p for p in KUBE.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))


def object_folders() -> list[Path]:
    """Folders whose every file kubectl may be pointed at: all of them hold only Kubernetes objects."""
    return [KUBE, CELL, MONITORING]


DEFAULT = load_folder(KUBE)
CELL_SET = load_folder(CELL)
MONITORING_SET = load_folder(MONITORING)
ALL = DEFAULT + CELL_SET + MONITORING_SET
WORKLOADS = pod_templates(ALL)
# What is applied together (kubectl apply -f kube; -f kube/00-namespace.yaml -f kube/cell/): Services,
# selectors and ServiceAccounts are checked inside each set.
SETS = {"default": DEFAULT, "cell": [m for m in DEFAULT if m.kind == "Namespace"] + CELL_SET}


def all_containers() -> Iterator[tuple[Manifest, dict, dict]]:
    for m, template in WORKLOADS:
        for c in containers(template["spec"]):
            yield m, template, c


CONTAINERS = list(all_containers())
CONTAINER_IDS = [f"{m}:{c['name']}" for m, _t, c in CONTAINERS]


def image_name(image: str) -> str:
    prefix = f"{REGISTRY}/robomesh/"
    assert image.startswith(prefix) and image.endswith(f":{TAG}"), f"{image} is not {prefix}<name>:{TAG}"
    return image[len(prefix):-len(f":{TAG}")]


def service_of(container: dict) -> str:
    service = IMAGES.get(image_name(container["image"]))
    assert service, f"{container['image']} is not a server image"
    return service


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def env_value(container: dict, name: str, default: Any = None) -> Any:
    entry = env_of(container).get(name)
    return default if entry is None else entry.get("value")


def port_names(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports") or [] if "name" in p}


def resolve_target_port(target: int | str, container: dict) -> int | None:
    ports = container.get("ports") or []
    if isinstance(target, int):
        return target if any(p["containerPort"] == target for p in ports) else None
    return port_names(container).get(target)


# ----------------------------------------------------------------------------- parsing and schemas


@pytest.mark.parametrize("path", all_kube_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_file_parses(path: Path) -> None:
    docs = load_file(path)
    assert docs, f"{path} holds no document"
    if path.suffix == ".json":
        json.loads(path.read_text())  # strict JSON too, not just YAML


def test_object_folders_hold_only_kubernetes_objects() -> None:
    # kubectl apply -f FOLDER fails on any .yaml/.json there that is not an object (e.g. a raw dashboard).
    for folder in object_folders():
        for m in load_folder(folder):
            assert isinstance(m.doc, dict), f"{m}: not a mapping"
            assert m.doc.get("apiVersion") and m.kind and m.name, f"{m}: apiVersion, kind and metadata.name needed"
    assert not (KUBE / "kustomization.yaml").exists() and not (KUBE / "kustomization.yml").exists(), \
        "a kustomization file inside kube/ would be applied as an object by kubectl apply -f kube"


def core_objects() -> list[Manifest]:
    return [m for m in ALL if "/" not in m.doc["apiVersion"] or m.doc["apiVersion"].split("/")[0].endswith("k8s.io")
            or m.doc["apiVersion"].split("/")[0] in ("apps", "batch", "policy", "autoscaling")]


def custom_objects() -> list[Manifest]:
    core = {id(m) for m in core_objects()}
    return [m for m in ALL if id(m) not in core]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("m", core_objects(), ids=str)
def test_kubernetes_schema_strict(m: Manifest, version: str) -> None:
    kubernetes_validate.validate(m.doc, version, strict=True)


def test_strict_schema_catches_a_misspelled_field() -> None:
    deployment = next(m for m in DEFAULT if m.kind == "Deployment").doc
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_custom_resources_are_known() -> None:
    kinds = {(m.doc["apiVersion"], m.kind) for m in custom_objects()}
    assert kinds <= {("monitoring.coreos.com/v1", "PodMonitor")}, f"no check written for {kinds}"


@pytest.mark.parametrize("m", [m for m in custom_objects() if m.kind == "PodMonitor"], ids=str)
def test_podmonitor_model_strict(m: Manifest) -> None:
    # Kubernetes schemas do not cover CRDs; the prometheus-operator models do (extra fields forbidden).
    try:
        from cloudcoil.models.prometheus_operator import v1 as prom_v1
    except ImportError:
        pytest.skip("cloudcoil.models.prometheus-operator is not installed; test_podmonitor_shape still runs")
    prom_v1.PodMonitor.model_validate(m.doc, extra="forbid")
    broken = json.loads(json.dumps(m.doc))
    broken["spec"]["podMetricsEndpoints"][0]["portName"] = "x"
    with pytest.raises(ValueError):
        prom_v1.PodMonitor.model_validate(broken, extra="forbid")


# ----------------------------------------------------------------------------- apply order and namespace


def test_kubectl_apply_reads_namespace_first() -> None:
    files = kubectl_files(KUBE)
    assert files[0].name == "00-namespace.yaml", [f.name for f in files]
    first = load_file(files[0])
    assert [(m.kind, m.name) for m in first] == [("Namespace", NAMESPACE)]
    assert first[0].doc["metadata"]["labels"]["istio-injection"] == "enabled"
    assert all(re.match(r"\d\d-", f.name) for f in files), "numbered files keep the apply order explicit"
    assert (CELL.is_dir() and MONITORING.is_dir()), "the alternatives live in subfolders kubectl does not read"


def test_every_object_is_namespaced_in_robodemo() -> None:
    for m in ALL:
        if m.kind == "Namespace":
            assert m.path == KUBE / "00-namespace.yaml", f"{m}: the namespace is declared once, first"
            continue
        assert m.namespace == NAMESPACE, f"{m}: namespace {m.namespace!r}"


def test_names_are_unique_per_kind() -> None:
    index(ALL)


# ----------------------------------------------------------------------------- topology of the contract


def workload(name: str, kind: str = "Deployment") -> tuple[dict, dict]:
    m = index(ALL)[(kind, name)]
    return m.doc, m.doc["spec"]["template"]


EXPECTED_DEFAULT = {
    # name: (app, version, site, image, replicas, nodeSelector subset)
    "objectdetection-edge": ("objectdetection", "v1", "edge", "objectdetection", 1, {"robomesh.io/site": "edge"}),
    "objectdetection-cloud": ("objectdetection", "v1", "cloud", "objectdetection", 1, {"robomesh.io/site": "cloud"}),
    "facedetection-v1": ("facedetection", "v1", "edge", "facedetection", 1, {}),
    "yolodetection-v1": ("yolodetection", "v1", "edge", "yolodetection", 1, {}),
    "yolodetection-v2": ("yolodetection", "v2", "cloud", "yolodetection-cuda", 1, {"gputype": "nvidia"}),
    "yolodetection-v3": ("yolodetection", "v3", "edge", "yolodetection-openvino", 0,
                         {"robomesh.io/accelerator": "intel-npu"}),
}


def test_default_topology_matches_the_contract() -> None:
    deployments = {m.name: m for m in DEFAULT if m.kind == "Deployment"}
    assert set(deployments) == set(EXPECTED_DEFAULT)
    assert not [m for m in DEFAULT if m.kind == "DaemonSet"], "DaemonSets belong to kube/cell/"
    for name, (app, version, site, image, replicas, node_selector) in EXPECTED_DEFAULT.items():
        doc, template = workload(name)
        labels = template_labels(template)
        assert (labels.get("app"), labels.get("version"), labels.get("site")) == (app, version, site), name
        assert doc["spec"]["replicas"] == replicas, name
        spec = template["spec"]
        assert node_selector.items() <= (spec.get("nodeSelector") or {}).items(), name
        (c,) = spec["containers"]
        assert image_name(c["image"]) == image, name
        assert spec["serviceAccountName"] == app, name


def test_site_labels_are_true() -> None:
    # SITE in served_by and Istio's edge/cloud subsets come from the site label: pin pods to that site.
    for m, template in WORKLOADS:
        site = template_labels(template)["site"]
        assert (template["spec"].get("nodeSelector") or {}).get("robomesh.io/site") == site, str(m)


def test_services_of_the_contract() -> None:
    services = {m.name: m.doc for m in DEFAULT if m.kind == "Service"}
    assert set(services) == {"objectdetection", "facedetection", "yolodetection", "objectdetection-nodeport"}
    for app, (grpc_port, _metrics) in PORTS.items():
        spec = services[app]["spec"]
        assert spec.get("type", "ClusterIP") == "ClusterIP"
        assert spec["selector"] == {"app": app}, "selector app only: Istio subsets pick versions/sites"
        (port,) = [p for p in spec["ports"] if p["name"] == "grpc"]
        assert port["port"] == grpc_port and port.get("appProtocol") == "grpc"
    nodeport = services["objectdetection-nodeport"]["spec"]
    assert nodeport["type"] == "NodePort" and nodeport["selector"] == {"app": "objectdetection"}
    assert [(p["port"], p["nodePort"]) for p in nodeport["ports"]] == [(50051, 30051)]


def test_gpu_and_npu_variants() -> None:
    for m, template in WORKLOADS:
        for c in containers(template["spec"]):
            limits = (c.get("resources") or {}).get("limits") or {}
            requests = (c.get("resources") or {}).get("requests") or {}
            wants_cuda = env_value(c, "YOLO_DEVICE") == "cuda"
            assert ("nvidia.com/gpu" in limits) == wants_cuda, f"{m}:{c['name']}"
            if wants_cuda:
                assert str(limits["nvidia.com/gpu"]) == "1"
                assert str(requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"])) == str(limits["nvidia.com/gpu"])
                assert image_name(c["image"]) == "yolodetection-cuda"
                assert env_value(c, "YOLO_ENGINE") == "onnxruntime"
                assert template["spec"]["nodeSelector"].get("gputype") == "nvidia"
    _doc, v3 = workload("yolodetection-v3")
    (c,) = v3["spec"]["containers"]
    assert (env_value(c, "YOLO_ENGINE"), env_value(c, "YOLO_DEVICE")) == ("openvino", "npu")


def test_cell_topology() -> None:
    daemonsets = {m.name: m for m in CELL_SET if m.kind == "DaemonSet"}
    assert set(daemonsets) == {"robomesh-cell", "robomesh-cell-gpu"}
    gpu = daemonsets["robomesh-cell-gpu"].doc["spec"]["template"]["spec"]
    cpu = daemonsets["robomesh-cell"].doc["spec"]["template"]["spec"]
    assert gpu["nodeSelector"]["gputype"] == "nvidia"
    # The CPU cell must avoid exactly the nodes the GPU cell takes.
    terms = cpu["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "gputype", "operator": "NotIn", "values": ["nvidia"]} in terms[0]["matchExpressions"]
    for spec in (cpu, gpu):
        assert sorted(service_of(c) for c in spec["containers"]) == sorted(PORTS)
        agg = next(c for c in spec["containers"] if service_of(c) == "objectdetection")
        assert env_value(agg, "FACEDETECTION_HOST") == "localhost:50053"
        assert env_value(agg, "YOLODETECTION_HOST") == "localhost:50055"
        # Port names are unique in a pod.
        names = [p["name"] for c in spec["containers"] for p in c.get("ports") or []]
        assert len(names) == len(set(names)), names
    assert [image_name(c["image"]) for c in gpu["containers"] if service_of(c) == "yolodetection"] == \
        ["yolodetection-cuda"]


# ----------------------------------------------------------------------------- Services, selectors, ports


def service_cases() -> list[tuple[str, Manifest]]:
    return [(set_name, m) for set_name, ms in SETS.items() for m in ms if m.kind == "Service"]


@pytest.mark.parametrize("set_name,svc", service_cases(), ids=lambda x: x if isinstance(x, str) else str(x))
def test_service_selects_pods_and_real_ports(set_name: str, svc: Manifest) -> None:
    spec = svc.doc["spec"]
    selected = [(m, t) for m, t in pod_templates(SETS[set_name]) if selects(spec.get("selector"), template_labels(t))]
    assert selected, f"{svc}: selector {spec.get('selector')} matches no pod template of the {set_name} set"
    for port in spec["ports"]:
        name = port.get("name", "")
        assert name == "grpc" or name.startswith(("grpc-", "http-")), f"{svc}: port name {name!r}"
        if name == "grpc" or name.startswith("grpc-"):
            assert port.get("appProtocol") == "grpc", f"{svc}: {name} needs appProtocol grpc"
        target = port.get("targetPort", port["port"])
        for m, t in selected:
            resolved = [resolve_target_port(target, c) for c in containers(t["spec"], init=False)]
            assert any(resolved), f"{svc}: targetPort {target!r} is no container port of {m}"
            if name.startswith("grpc"):
                # The gRPC port of the Service is the aggregator's/detector's PORT.
                assert port["port"] in {int(env_value(c, "PORT", 0)) for c in t["spec"]["containers"]}, str(svc)


def test_deployment_selectors_do_not_overlap() -> None:
    for m, _ in WORKLOADS:
        selector = m.doc["spec"]["selector"]["matchLabels"]
        assert selects(selector, template_labels(m.doc["spec"]["template"])), f"{m}: selector misses its template"
        for other, template in WORKLOADS:
            if other is not m and other.namespace == m.namespace:
                assert not selects(selector, template_labels(template)), f"{m} would adopt pods of {other}"


def test_every_service_account_exists() -> None:
    for set_name, ms in SETS.items():
        accounts = {m.name for m in ms if m.kind == "ServiceAccount"}
        for m, t in pod_templates(ms):
            assert t["spec"].get("serviceAccountName") in accounts, f"{m} ({set_name} set)"
    assert {m.name for m in ALL if m.kind == "ServiceAccount"} == {
        "objectdetection", "facedetection", "yolodetection", "robomesh-cell"}


# ----------------------------------------------------------------------------- containers


@pytest.mark.parametrize("m,template,c", CONTAINERS, ids=CONTAINER_IDS)
def test_ports_and_env_agree(m: Manifest, template: dict, c: dict) -> None:
    service = service_of(c)
    grpc_port, metrics_port = PORTS[service]
    assert int(env_value(c, "PORT")) == grpc_port and int(env_value(c, "METRICS_PORT")) == metrics_port
    ports = {p["containerPort"]: p for p in c["ports"]}
    assert set(ports) == {grpc_port, metrics_port}, f"{m}:{c['name']}"
    assert ports[grpc_port]["name"].startswith("grpc")
    for name, entry in env_of(c).items():
        assert ("value" in entry) != ("valueFrom" in entry), f"{name}: value or valueFrom"


def read_env_names() -> set[str]:
    pattern = re.compile(r"""(?:env_default\(|env\.get\(|environ\.get\(|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")
    return {name for path in (REPO / "services").rglob("*.py") for name in pattern.findall(path.read_text())}


@pytest.mark.parametrize("m,template,c", CONTAINERS, ids=CONTAINER_IDS)
def test_env_names_are_read_by_the_servers(m: Manifest, template: dict, c: dict) -> None:
    known = read_env_names()
    assert {"PORT", "GRACE_PERIOD_S", "SHUTDOWN_DELAY_S", "SERVICE_VERSION"} <= known  # the scan works
    unknown = set(env_of(c)) - known - FOREIGN_ENV
    assert not unknown, f"{m}:{c['name']} sets variables no server reads: {sorted(unknown)}"


DOWNWARD = {
    "POD_NAME": "metadata.name",
    "POD_IP": "status.podIP",
    "NODE_NAME": "spec.nodeName",
    "SERVICE_VERSION": "metadata.labels['version']",
    "SITE": "metadata.labels['site']",
    "ZONE": "metadata.labels['topology.kubernetes.io/zone']",
}


@pytest.mark.parametrize("m,template,c", CONTAINERS, ids=CONTAINER_IDS)
def test_identity_from_the_downward_api(m: Manifest, template: dict, c: dict) -> None:
    env = env_of(c)
    for name, field in DOWNWARD.items():
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == field, f"{m}:{c['name']} {name}"
    labels = template_labels(template)
    for label in ("app", "version", "site"):
        assert labels.get(label), f"{m}: pod label {label} missing"


def test_aggregator_reaches_detectors_by_service() -> None:
    services = {m.name: m.doc for m in DEFAULT if m.kind == "Service"}
    for m, template in pod_templates(DEFAULT):
        for c in template["spec"]["containers"]:
            if service_of(c) != "objectdetection":
                continue
            for var, app in (("FACEDETECTION_HOST", "facedetection"), ("YOLODETECTION_HOST", "yolodetection")):
                host, port = env_value(c, var).rsplit(":", 1)
                assert host == app and host in services, f"{m}: {var}"
                assert int(port) in {p["port"] for p in services[host]["spec"]["ports"] if p["name"] == "grpc"}


def registered_health_names(service: str) -> set[str]:
    """The health service names the real server registers, from building it with its own main()."""
    import importlib

    from services.common import server as server_mod

    seen: set[str] = set()

    class Context:
        code = None

        def set_code(self, code):
            self.code = code

        def set_details(self, _details):
            pass

    def fake_run(self, load):
        candidates = ["", *HEALTH_NAMES.values(), "ObjectDetection", "FaceDetection", "YoloDetection", "bogus"]
        for name in candidates:
            ctx = Context()
            reply = self.health.Check(health_pb2.HealthCheckRequest(service=name), ctx)
            if ctx.code != grpc.StatusCode.NOT_FOUND:
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING  # not ready before loading
                seen.add(name)
        self.server.stop(None)
        return 0

    module = importlib.import_module(f"services.{service}.__main__")
    original = server_mod.ManagedServer.run_until_signal
    server_mod.ManagedServer.run_until_signal = fake_run
    try:
        assert module.main(["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]) == 0
    finally:
        server_mod.ManagedServer.run_until_signal = original
    assert "bogus" not in seen
    return seen


@pytest.fixture(scope="module")
def health_names() -> dict[str, set[str]]:
    return {service: registered_health_names(service) for service in PORTS}


@pytest.mark.parametrize("m,template,c", CONTAINERS, ids=CONTAINER_IDS)
def test_probes_hit_real_ports_and_registered_health_names(
        m: Manifest, template: dict, c: dict, health_names: dict[str, set[str]]) -> None:
    service = service_of(c)
    grpc_port = int(env_value(c, "PORT"))
    probes = {kind: c.get(kind) for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"] and probes["livenessProbe"], f"{m}:{c['name']}"
    if service == "yolodetection":
        assert probes["startupProbe"], "YOLO loads and warms the model: it needs a startupProbe"
        startup = probes["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "give the model load 2 min at least"
    for kind, probe in probes.items():
        if probe is None:
            continue
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{kind}: native gRPC probe"
        assert probe["grpc"]["port"] == grpc_port, f"{m}:{c['name']} {kind} port"
        assert probe["grpc"]["port"] in {p["containerPort"] for p in c["ports"]}
        name = probe["grpc"].get("service", "")
        assert name == HEALTH_NAMES[service], f"{kind}: contract name"
        assert name in health_names[service], f"{service} registers no health status for {name!r}"
    liveness = probes["livenessProbe"]
    grace = template["spec"]["terminationGracePeriodSeconds"]
    # Health turns NOT_SERVING when the drain starts: liveness must not kill a draining pod before its grace ends.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= grace


def test_health_names_registered_by_the_servers(health_names: dict[str, set[str]]) -> None:
    for service, name in HEALTH_NAMES.items():
        assert {"", name} <= health_names[service], service


# ----------------------------------------------------------------------------- images


def test_images_are_from_the_contract() -> None:
    for m, _t, c in CONTAINERS:
        assert image_name(c["image"]) in IMAGES, f"{m}: {c['image']}"
        assert c.get("imagePullPolicy") == "IfNotPresent"
    for m, template in WORKLOADS:
        assert template["spec"].get("imagePullSecrets") == [{"name": "regcred"}], str(m)


def test_dockerfile_exists_for_every_image() -> None:
    dockerfiles = sorted((REPO / "docker").glob("*.Dockerfile"))
    if not dockerfiles:
        pytest.skip("docker/*.Dockerfile not written yet (the docker/ developer's part); this skip must go")
    for m, _t, c in CONTAINERS:
        name = image_name(c["image"])
        path = REPO / "docker" / f"{name}.Dockerfile"
        assert path.is_file(), f"{m}: {c['image']} has no {path.relative_to(REPO)}"
        lines = path.read_text().splitlines()
        # No `command:` in the manifests: the final stage's ENTRYPOINT must start the right server.
        entrypoints = [line for line in lines if line.startswith("ENTRYPOINT")]
        assert entrypoints and f"services.{IMAGES[name]}" in entrypoints[-1], \
            f"{path.name}: ENTRYPOINT does not run services.{IMAGES[name]}"
        assert "command" not in c, f"{m}: {c['name']} overrides the image entrypoint"
        # The image's user is the manifests' runAsUser, and it exposes the ports the manifests use.
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] == "10001", f"{path.name}: USER {users}"
        exposed = {int(p.split("/")[0]) for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
        assert set(PORTS[IMAGES[name]]) <= exposed, f"{path.name}: EXPOSE {sorted(exposed)}"


# ----------------------------------------------------------------------------- security and resources


def effective(container: dict, pod_sc: dict, key: str) -> Any:
    return (container.get("securityContext") or {}).get(key, pod_sc.get(key))


@pytest.mark.parametrize("m,template,c", CONTAINERS, ids=CONTAINER_IDS)
def test_security_context(m: Manifest, template: dict, c: dict) -> None:
    spec = template["spec"]
    pod_sc = spec.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    assert effective(c, pod_sc, "runAsNonRoot") is True
    assert effective(c, pod_sc, "runAsUser") == 10001
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("privileged") in (None, False)
    assert "ALL" in (sc.get("capabilities") or {}).get("drop", []) and not sc["capabilities"].get("add")
    assert (effective(c, pod_sc, "seccompProfile") or {}).get("type") == "RuntimeDefault"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key), key
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    assert not [v for v in volumes.values() if "hostPath" in v], "no hostPath volumes"
    mounts = {vm["mountPath"]: vm["name"] for vm in c.get("volumeMounts") or []}
    assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp on a read-only root filesystem"
    assert spec.get("automountServiceAccountToken") is False
    assert spec.get("enableServiceLinks") is False, "no <SVC>_PORT variables beside the servers' own env"


UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def cpu(q: str | int | float) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory(q: str | int) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()
    return int(float(number) * UNITS[unit])


def measured_rss_bytes() -> dict[str, float]:
    """VmRSS of each service from docs/benchmarks.md (MB = 10^6 bytes)."""
    text = (REPO / "docs" / "benchmarks.md").read_text()
    found = re.findall(r"^\s+(facedetection|yolodetection|objectdetection)\s+VmRSS\s+([0-9.]+) MB", text, re.M)
    assert {name for name, _ in found} == set(PORTS), "docs/benchmarks.md memory table not found"
    return {name: float(mb) * 1e6 for name, mb in found}


@pytest.mark.parametrize("m,template,c", CONTAINERS, ids=CONTAINER_IDS)
def test_resources(m: Manifest, template: dict, c: dict) -> None:
    res = c.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    for key in ("cpu", "memory"):
        assert key in requests and key in limits, f"{m}:{c['name']} {key} request and limit"
    assert cpu(requests["cpu"]) <= cpu(limits["cpu"])
    assert memory(requests["memory"]) <= memory(limits["memory"])
    if image_name(c["image"]) in ("objectdetection", "facedetection", "yolodetection"):  # the measured CPU images
        rss = measured_rss_bytes()[service_of(c)]
        assert memory(requests["memory"]) >= rss, f"{m}:{c['name']}: request below the measured RSS"
        assert memory(limits["memory"]) >= 1.5 * rss, f"{m}:{c['name']}: limit leaves < 50 % over the measured RSS"
    threads = env_value(c, "OPENCV_THREADS")
    if threads is not None:
        assert int(threads) <= cpu(limits["cpu"]), "more OpenCV threads than the CPU limit: throttling"


def duration_s(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(ms|s|m)", text)
    assert match, text
    value, unit = float(match[1]), match[2]
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


@pytest.mark.parametrize("m,template", WORKLOADS, ids=[str(m) for m, _ in WORKLOADS])
def test_termination_grace_covers_the_drain(m: Manifest, template: dict) -> None:
    spec = template["spec"]
    grace = spec["terminationGracePeriodSeconds"]
    for c in spec["containers"]:
        drain = float(env_value(c, "GRACE_PERIOD_S", DEFAULT_GRACE_S))
        delay = float(env_value(c, "SHUTDOWN_DELAY_S", DEFAULT_SHUTDOWN_DELAY_S))
        assert delay > 0, f"{c['name']}: SHUTDOWN_DELAY_S lets endpoints and Envoys update before the port closes"
        assert grace >= drain + delay + 1, f"{c['name']}: {grace} s < {drain} + {delay} s + margin"
        assert "lifecycle" not in c, "SHUTDOWN_DELAY_S replaces a preStop sleep"
    proxy = json.loads(template["metadata"]["annotations"]["proxy.istio.io/config"])
    drain_envoy = duration_s(proxy["terminationDrainDuration"])
    assert max(float(env_value(c, "GRACE_PERIOD_S", DEFAULT_GRACE_S)) + float(env_value(c, "SHUTDOWN_DELAY_S", 0))
               for c in spec["containers"]) <= drain_envoy <= grace, "Envoy must outlive the application's drain"


# ----------------------------------------------------------------------------- metrics scraping


@pytest.mark.parametrize("m,template", WORKLOADS, ids=[str(m) for m, _ in WORKLOADS])
def test_prometheus_annotations(m: Manifest, template: dict) -> None:
    ann = template["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    spec = template["spec"]
    metrics_ports = {int(env_value(c, "METRICS_PORT")) for c in spec["containers"]}
    grpc_ports = {int(env_value(c, "PORT")) for c in spec["containers"]}
    assert int(ann["prometheus.io/port"]) in metrics_ports
    excluded = {int(p) for p in ann["traffic.sidecar.istio.io/excludeInboundPorts"].split(",")}
    assert excluded == metrics_ports and not excluded & grpc_ports, "metrics bypass the sidecar, gRPC never does"


def test_podmonitor_shape() -> None:
    (pm,) = [m for m in MONITORING_SET if m.kind == "PodMonitor"]
    assert pm.doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = pm.doc["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel", "podTargetLabels"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoints = spec["podMetricsEndpoints"]
    for ep in endpoints:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}, ep
        assert ep["path"] == "/metrics" and re.fullmatch(r"\d+[sm]", ep["interval"])
    scraped = {ep["port"] for ep in endpoints}
    for m, template in WORKLOADS:
        assert selects(spec["selector"]["matchLabels"], template_labels(template)), f"PodMonitor misses {m}"
        for c in template["spec"]["containers"]:
            metrics_port = int(env_value(c, "METRICS_PORT"))
            (name,) = [p["name"] for p in c["ports"] if p["containerPort"] == metrics_port]
            assert name in scraped, f"{m}:{c['name']}: metrics port {name} not scraped"
    all_names = {p["name"] for _m, _t, c in CONTAINERS for p in c["ports"]}
    assert scraped <= all_names, "an endpoint names a port no pod has"


# ----------------------------------------------------------------------------- no credentials




def test_no_secrets_or_literal_credentials() -> None:
    assert not [m for m in ALL if m.kind == "Secret"], "Secrets are created by the operator, never committed"
    for m in ALL:
        for where, key, value in walk(m.doc):
            if isinstance(key, str) and SECRET_KEY.search(key) and isinstance(value, (str, int, float)) \
                    and not isinstance(value, bool):
                pytest.fail(f"{m}{where}: literal value for a credential-like key")
        for _m, template in pod_templates([m]):
            for c in containers(template["spec"]):
                for name, entry in env_of(c).items():
                    if SECRET_KEY.search(name):
                        assert "value" not in entry, f"{m}: env {name} with a literal value"
    for path in all_kube_files():
        text = path.read_text()
        assert ".dockerconfigjson" not in text and "PRIVATE KEY" not in text, path
        assert not re.search(r"(?i)--docker-password[= ]\S", text), path


def test_no_secrets_check_fails_on_a_password() -> None:
    doc = {"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"db_password": "hunter2"}}
    m = Manifest(Path("x.yaml"), 0, doc)
    hits = [where for where, key, value in walk(m.doc) if SECRET_KEY.search(key) and isinstance(value, str)]
    assert hits == [".data.db_password"]


# ----------------------------------------------------------------------------- Grafana dashboard


def exported_metrics() -> dict[str, set[str]]:
    """Sample names ServiceMetrics really exposes, with their label names (every metric touched once)."""
    from services.common.metrics import ServiceMetrics

    metrics = ServiceMetrics("objectdetection", "v1", "edge")
    metrics.count_request("Detect", "OK")
    metrics.observe_stages({"total": 1.0, "batch": 2})
    metrics.observe_detector("yolo", "OK", 0.01)
    metrics.count_detections("yolo", 1)
    with metrics.track_in_flight():
        pass
    out: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def queries(dash: dict) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


PROMQL_WORDS = {"sum", "count", "rate", "irate", "histogram_quantile", "by", "on", "without", "group_left",
                "group_right", "ignoring", "avg", "max", "min", "label_values", "increase", "le"}


def metric_names(expr: str) -> set[str]:
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_ranges = re.sub(r"\[[^\]]*\]", "", no_strings)
    no_matchers = re.sub(r"\{[^}]*\}", "{}", no_ranges)
    no_groupings = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", no_matchers)
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", no_groupings)
    return {w for w in words if w not in PROMQL_WORDS}


def labels_used(expr: str) -> set[str]:
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    used = set()
    for group in re.findall(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)", no_strings):
        used |= {g.strip() for g in group.split(",") if g.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", no_strings):
        used |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return used


def test_dashboard_queries_name_exported_metrics_and_labels() -> None:
    exported = exported_metrics()
    assert {"robomesh_requests_total", "robomesh_stage_seconds_bucket"} <= set(exported)  # the probe works
    known = {**exported, **FOREIGN_METRICS}
    dash = dashboard()
    exprs = queries(dash)
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        unknown = names - set(known)
        assert not unknown, f"{sorted(unknown)} not exported (services/common/metrics.py): {expr}"
        available = set().union(*(known[n] for n in names)) | {"le"}
        # label_version and friends are kube_pod_labels' copies of pod labels.
        missing = {label for label in labels_used(expr) - available if not label.startswith("label_")}
        assert not missing, f"labels {sorted(missing)} not on {sorted(names)}: {expr}"
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"]).groups()
            assert metric in exported and label in exported[metric], var["name"]


def test_dashboard_metric_check_fails_on_an_unknown_metric() -> None:
    assert metric_names('sum by (version) (rate(robomesh_frames_total{code!="OK"}[1m]))') == {"robomesh_frames_total"}
    assert labels_used('sum by (version, le) (rate(x{code!="OK", site=~"$site"}[1m]))') == {"version", "le", "code",
                                                                                             "site"}


def test_dashboard_panels_cover_the_brief() -> None:
    dash = dashboard()
    text = "\n".join(queries(dash))
    for needle in ("rate(robomesh_requests_total", "robomesh_stage_seconds_bucket", "robomesh_detector_seconds_bucket",
                   'code!="OK"', "robomesh_batch_size_bucket", "robomesh_requests_in_flight", "kube_pod_info"):
        assert needle in text, needle
    assert "histogram_quantile" in text
    ids_ = [p["id"] for p in dash["panels"]]
    assert len(ids_) == len(set(ids_))
    for p in dash["panels"]:
        assert p["targets"] and {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
    assert {v["name"] for v in dash["templating"]["list"]} >= {"version", "site"}


def test_dashboard_configmap_holds_the_same_json() -> None:
    (cm,) = [m for m in MONITORING_SET if m.kind == "ConfigMap"]
    assert cm.doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name, text), = cm.doc["data"].items()
    assert name.endswith(".json")
    assert text == DASHBOARD_JSON.read_text(), "regenerate the ConfigMap from kube/monitoring/dashboards/robomesh.json"
    assert json.loads(text)["uid"] == "robomesh"


# ----------------------------------------------------------------------------- Istio subsets (istio/ is not ours)


def test_istio_subsets_select_pod_templates() -> None:
    path = REPO / "istio" / "destination-rules.yaml"
    if not path.is_file():
        pytest.skip("istio/destination-rules.yaml not written yet")
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "DestinationRule":
            continue
        app = doc["spec"]["host"].split(".")[0]
        for subset in doc["spec"].get("subsets") or []:
            labels = {"app": app, **subset["labels"]}
            assert [m for m, t in pod_templates(DEFAULT) if selects(labels, template_labels(t))], \
                f"subset {subset['name']} of {app} selects no pod template in kube/"


# ----------------------------------------------------------------------------- docs


def test_docs_name_every_node_label_the_manifests_need() -> None:
    text = (REPO / "docs" / "kubernetes.md").read_text()
    keys = set()
    for _m, template in WORKLOADS:
        keys |= set(template["spec"].get("nodeSelector") or {})
        affinity = (template["spec"].get("affinity") or {}).get("nodeAffinity") or {}
        for term in (affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms", []):
            keys |= {e["key"] for e in term.get("matchExpressions", [])}
    for key in keys | {"topology.kubernetes.io/region", "topology.kubernetes.io/zone"}:
        assert key in text, f"docs/kubernetes.md does not mention node label {key}"
