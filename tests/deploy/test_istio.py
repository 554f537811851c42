"""Offline validation of the Istio configuration in istio/ (no cluster, no istioctl).

Two layers:
- schema: every object validates against the cloudcoil Istio models with ``extra="forbid"``
  (the default parse silently drops misspelled fields) and the apiVersion the files use;
- meaning: the checks below (subsets exist and match pod labels in kube/, weights sum to 100,
  timeouts fit the robot's 1 s frame deadline, principals name real ServiceAccounts, ...).

Each semantic check is a function returning a list of problems. The tests run every check on the
real files (expecting none) and on a deliberately broken copy (expecting the check to complain),
so no check can pass vacuously.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import KUBECTL_EXTENSIONS, kubectl_files

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "istio"
KUBE = ROOT / "kube"
NAMESPACE = "robodemo"
FRAME_DEADLINE_S = 1.0
INGRESS_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
GATEWAY_PORT = 31400
GRPC_PORTS = {"objectdetection": 50051, "facedetection": 50053, "yolodetection": 50055}
METRICS_PORTS = {"objectdetection": 9091, "facedetection": 9093, "yolodetection": 9095}

# The files named in the shared naming contract (/tmp/contract/contract.md), by their path under istio/.
# The top level is the baseline, all that `kubectl apply -f istio` reads (it does not recurse); what
# replaces a baseline object lives in a subfolder: traffic steps, faults, opt-in security.
STEPS, FAULTS, OPT_IN = "steps", "faults", "opt-in"
YOLO_STEPS = [(100, 0), (90, 10), (50, 50), (0, 100)]
YOLO_STEP_FILES = [f"{STEPS}/yolodetection-shift-{a}-{b}.yaml" for a, b in YOLO_STEPS]
YOLO_90_10, YOLO_50_50 = YOLO_STEP_FILES[1:3]
OD_EDGE = f"{STEPS}/objectdetection-edge.yaml"
OD_50_50 = f"{STEPS}/objectdetection-shift-edge-cloud-50-50.yaml"
OD_CLOUD = f"{STEPS}/objectdetection-cloud.yaml"
OD_STEP_FILES = {OD_EDGE: (100, 0), OD_50_50: (50, 50), OD_CLOUD: (0, 100)}  # file -> (edge weight, cloud weight)
BASELINE = "virtual-services.yaml"
HEADER_FILE = f"{STEPS}/yolodetection-by-robot-id.yaml"
FAULT_FILE = f"{FAULTS}/fault-delay-yolodetection.yaml"
NODEPORT_FILE = f"{OPT_IN}/security-nodeport.yaml"
TOP_LEVEL = {"gateway.yaml", "destination-rules.yaml", BASELINE, "security.yaml"}
CONTRACT_FILES = {*TOP_LEVEL, NODEPORT_FILE, HEADER_FILE, FAULT_FILE, *YOLO_STEP_FILES, *OD_STEP_FILES}
EXPECTED_SUBSETS = {
    "yolodetection": {"v1": {"version": "v1"}, "v2": {"version": "v2"}, "v3": {"version": "v3"}},
    "objectdetection": {"edge": {"site": "edge"}, "cloud": {"site": "cloud"}},
    "facedetection": {"v1": {"version": "v1"}},
}

# retryOn conditions Envoy knows (router filter: x-envoy-retry-on and x-envoy-retry-grpc-on).
RETRY_ON = {
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

Doc = dict
Docs = dict[str, list[Doc]]  # file name -> documents


# ----------------------------------------------------------------------------- loading

def load_dir(path: Path) -> Docs:
    """Top-level *.yaml of a folder (kubectl apply -f DIR does not recurse), empty documents dropped."""
    out: Docs = {}
    for f in sorted(path.glob("*.yaml")):
        with f.open(encoding="utf-8") as fh:
            out[f.name] = [d for d in yaml.safe_load_all(fh) if d is not None]
    return out


def load_tree(path: Path) -> Docs:
    """Every file kubectl could be pointed at under a folder (.yaml, .yml, .json), keyed by its path
    relative to it: "virtual-services.yaml" at the top level, "steps/..." below; empty documents dropped."""
    out: Docs = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in KUBECTL_EXTENSIONS):
        with f.open(encoding="utf-8") as fh:
            out[f.relative_to(path).as_posix()] = [d for d in yaml.safe_load_all(fh) if d is not None]
    return out


def top_level(docs: Docs) -> Docs:
    """What `kubectl apply -f istio` reads: the files directly in istio/."""
    return {name: ds for name, ds in docs.items() if "/" not in name}


def everything(docs: Docs) -> list[Doc]:
    return [d for ds in docs.values() for d in ds]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


@pytest.fixture(scope="module")
def istio() -> Docs:
    docs = load_tree(ISTIO)
    assert docs, f"no YAML files in {ISTIO}"
    return docs


@pytest.fixture(scope="module")
def kube() -> Docs:
    docs = load_dir(KUBE) if KUBE.is_dir() else {}
    if not docs:
        pytest.skip("kube/ has no manifests yet: label/Service/ServiceAccount cross-checks need them")
    return docs


# ----------------------------------------------------------------------------- helpers

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s))+$")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def duration_s(text: object) -> float:
    """A Go/protobuf duration as Istio accepts it ("1s", "400ms", "1m30s"); ValueError otherwise."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)", text))


def service_of(host: str, namespace: str = NAMESPACE) -> tuple[str, str]:
    """(service, namespace) of a Kubernetes host name: short, name.ns, or name.ns.svc.cluster.local."""
    parts = host.split(".")
    if len(parts) == 1:
        return parts[0], namespace
    if len(parts) == 2 or (host.endswith(".svc.cluster.local") and len(parts) == 5):
        return parts[0], parts[1]
    raise ValueError(f"{host!r} is not a Kubernetes Service host")


def destinations(vs: Doc) -> list[Doc]:
    return [r["destination"] for rule in vs["spec"].get("http", []) for r in rule.get("route", [])]


def gateway_bound(vs: Doc) -> bool:
    gws = vs["spec"].get("gateways") or ["mesh"]
    return any(g != "mesh" for g in gws)


def binds_mesh(vs: Doc) -> bool:
    return "mesh" in (vs["spec"].get("gateways") or ["mesh"])


def route_weights(vs: Doc, rule_name: str = "default") -> list[tuple[str, int]]:
    """(subset, weight) in file order: step files list the subsets in the same order every time."""
    rule = next(r for r in vs["spec"]["http"] if r.get("name") == rule_name)
    return [(r["destination"]["subset"], r.get("weight", 100)) for r in rule["route"]]


def pod_templates(kube_docs: list[Doc]) -> list[tuple[str, Doc]]:
    """(workload name, pod template) of every workload kubectl apply -f kube would create."""
    out = []
    for d in kube_docs:
        if d.get("kind") in ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet"):
            out.append((d["metadata"]["name"], d["spec"]["template"]))
        elif d.get("kind") == "Pod":
            out.append((d["metadata"]["name"], d))
    return out


# ----------------------------------------------------------------------------- schema

def _models() -> dict[tuple[str, str], type]:
    from cloudcoil.models.istio.networking import v1 as net
    from cloudcoil.models.istio.security import v1 as sec

    return {
        ("networking.istio.io/v1", "VirtualService"): net.VirtualService,
        ("networking.istio.io/v1", "DestinationRule"): net.DestinationRule,
        ("networking.istio.io/v1", "Gateway"): net.Gateway,
        ("security.istio.io/v1", "PeerAuthentication"): sec.PeerAuthentication,
        ("security.istio.io/v1", "AuthorizationPolicy"): sec.AuthorizationPolicy,
    }


def schema_problems(docs: Docs) -> list[str]:
    pydantic = pytest.importorskip("pydantic")
    models = _models()
    problems = []
    for name, ds in docs.items():
        if not ds:
            problems.append(f"{name}: no documents")
        for d in ds:
            if not isinstance(d, dict):
                problems.append(f"{name}: a document is not a mapping")
                continue
            key = (d.get("apiVersion"), d.get("kind"))
            where = f"{name}: {key[1]} {d.get('metadata', {}).get('name')}"
            if key not in models:
                problems.append(f"{where}: unexpected apiVersion/kind {key}")
                continue
            try:
                models[key].model_validate(d, extra="forbid")
            except pydantic.ValidationError as err:
                problems.append(f"{where}: {err}")
            if d.get("metadata", {}).get("namespace") != NAMESPACE:
                problems.append(f"{where}: metadata.namespace must be {NAMESPACE}")
    return problems


# ----------------------------------------------------------------------------- semantic checks

def subset_problems(docs: Docs) -> list[str]:
    """Subsets declared once, all in destination-rules.yaml; every referenced subset exists."""
    problems = []
    declared: dict[tuple[str, str], str] = {}
    dr_hosts: dict[tuple[str, str], str] = {}
    for fname, ds in docs.items():
        for dr in of_kind(ds, "DestinationRule"):
            if fname != "destination-rules.yaml":
                problems.append(f"{fname}: DestinationRule {dr['metadata']['name']} outside destination-rules.yaml")
            host = service_of(dr["spec"]["host"], dr["metadata"].get("namespace", NAMESPACE))
            if host in dr_hosts:
                problems.append(f"host {host} has two DestinationRules")
            dr_hosts[host] = fname
            for s in dr["spec"].get("subsets", []):
                if (host, s["name"]) in declared:
                    problems.append(f"subset {s['name']} of {host} declared twice")
                declared[(host, s["name"])] = fname
                if not s.get("labels"):
                    problems.append(f"subset {s['name']} of {host} selects no labels")
    for svc, subsets in EXPECTED_SUBSETS.items():
        for s in subsets:
            if ((svc, NAMESPACE), s) not in declared:
                problems.append(f"contract subset {svc}/{s} not declared")
    for fname, ds in docs.items():
        for vs in of_kind(ds, "VirtualService"):
            ns = vs["metadata"].get("namespace", NAMESPACE)
            for dest in destinations(vs):
                key = (service_of(dest["host"], ns), dest.get("subset"))
                if key[1] is not None and key not in declared:
                    problems.append(f"{fname}: {vs['metadata']['name']} routes to undeclared subset {key}")
    return problems


def subset_label_problems(docs: Docs, kube_docs: list[Doc]) -> list[str]:
    """The contract's subset labels, and each subset's labels exist on a pod of that Service."""
    problems = []
    services = {d["metadata"]["name"]: d for d in of_kind(kube_docs, "Service")}
    templates = pod_templates(kube_docs)
    for dr in of_kind(everything(docs), "DestinationRule"):
        svc, _ = service_of(dr["spec"]["host"])
        if svc not in services:
            problems.append(f"DestinationRule {dr['metadata']['name']}: no Service {svc} in kube/")
            continue
        selector = services[svc]["spec"].get("selector", {})
        for s in dr["spec"].get("subsets", []):
            want = {**selector, **s.get("labels", {})}
            expected = EXPECTED_SUBSETS.get(svc, {}).get(s["name"])
            if expected is not None and s.get("labels") != expected:
                problems.append(f"subset {svc}/{s['name']}: labels {s.get('labels')} != contract {expected}")
            pods = [n for n, t in templates if want.items() <= (t["metadata"].get("labels") or {}).items()]
            if not pods:
                problems.append(f"subset {svc}/{s['name']}: no pod template in kube/ has labels {want}")
    return problems


def route_problems(docs: Docs) -> list[str]:
    """Weights sum to 100; timeouts within the frame deadline; retries fit inside the timeout."""
    problems = []
    for fname, ds in docs.items():
        for vs in of_kind(ds, "VirtualService"):
            name = f"{fname}: {vs['metadata']['name']}"
            rules = vs["spec"].get("http", [])
            if not rules:
                problems.append(f"{name}: no http routes")
            for i, rule in enumerate(rules):
                where = f"{name} route {rule.get('name', i)}"
                route = rule.get("route", [])
                if not route:
                    problems.append(f"{where}: no destinations")
                weights = [r.get("weight", 100 if len(route) == 1 else 0) for r in route]
                if sum(weights) != 100 or any(w < 0 for w in weights):
                    problems.append(f"{where}: weights {weights} do not sum to 100")
                for r in route:
                    d = r["destination"]
                    if "subset" not in d or "number" not in d.get("port", {}):
                        problems.append(f"{where}: destination {d} lacks subset or port.number")
                try:
                    timeout = duration_s(rule.get("timeout"))
                except ValueError as err:
                    problems.append(f"{where}: timeout: {err}")
                    continue
                if not 0 < timeout <= FRAME_DEADLINE_S:
                    problems.append(f"{where}: timeout {timeout}s not within the {FRAME_DEADLINE_S}s frame deadline")
                retries = rule.get("retries")
                if retries is None:
                    problems.append(f"{where}: no retry policy (Istio's default of 2 retries would apply)")
                    continue
                attempts = retries.get("attempts", 0)
                try:
                    per_try = duration_s(retries.get("perTryTimeout"))
                except ValueError as err:
                    problems.append(f"{where}: perTryTimeout: {err}")
                    continue
                # attempts counts retries: the first try plus `attempts` retries must fit the timeout.
                if (attempts + 1) * per_try > timeout + 1e-9:
                    problems.append(f"{where}: (1 + {attempts}) x {per_try}s exceeds timeout {timeout}s")
                unknown = set(retries.get("retryOn", "").split(",")) - RETRY_ON
                if attempts and (unknown or not retries.get("retryOn")):
                    problems.append(f"{where}: unknown retryOn conditions {sorted(unknown)}")
    return problems


def host_problems(docs: Docs, kube_docs: list[Doc]) -> list[str]:
    """VirtualService hosts and destinations are real Services in kube/, on their gRPC port."""
    problems = []
    services = {d["metadata"]["name"]: d for d in of_kind(kube_docs, "Service")
                if d["metadata"].get("namespace") == NAMESPACE}
    for fname, ds in docs.items():
        for vs in of_kind(ds, "VirtualService"):
            name = f"{fname}: {vs['metadata']['name']}"
            hosts = vs["spec"].get("hosts", [])
            if binds_mesh(vs):
                for h in hosts:
                    if h == "*" or service_of(h)[0] not in services:
                        problems.append(f"{name}: mesh host {h} is not a Service in kube/")
            dest_svcs = set()
            for d in destinations(vs):
                svc, ns = service_of(d["host"])
                dest_svcs.add(svc)
                if ns != NAMESPACE or svc not in services:
                    problems.append(f"{name}: destination {d['host']} is not a Service in kube/")
                    continue
                grpc = [p["port"] for p in services[svc]["spec"]["ports"]
                        if p.get("name") == "grpc" or p.get("appProtocol") == "grpc"]
                if d.get("port", {}).get("number") not in grpc:
                    problems.append(f"{name}: {d['host']} port {d.get('port')} is not a gRPC port {grpc}")
            if len(dest_svcs) != 1:
                problems.append(f"{name}: routes to {sorted(dest_svcs)}; one host per VirtualService")
    return problems


def principal_problems(docs: Docs, kube_docs: list[Doc]) -> list[str]:
    """AuthorizationPolicy principals are the ingress gateway or ServiceAccounts in kube/."""
    problems = []
    accounts = {(d["metadata"].get("namespace"), d["metadata"]["name"])
                for d in of_kind(kube_docs, "ServiceAccount")}
    for ap in of_kind(everything(docs), "AuthorizationPolicy"):
        for rule in ap["spec"].get("rules", []):
            for src in rule.get("from", []):
                for p in src.get("source", {}).get("principals", []):
                    m = re.fullmatch(r"cluster\.local/ns/([^/]+)/sa/([^/]+)", p)
                    if p == INGRESS_PRINCIPAL:
                        continue
                    if not m or (m[1], m[2]) not in accounts:
                        problems.append(f"AuthorizationPolicy {ap['metadata']['name']}: "
                                        f"{p} is no ServiceAccount in kube/")
    return problems


def security_problems(docs: Docs) -> list[str]:
    """STRICT mTLS namespace-wide; who may call what on the gRPC ports (security.yaml)."""
    problems = []
    ds = docs.get("security.yaml", [])
    pas = of_kind(ds, "PeerAuthentication")
    if not any(pa["spec"].get("mtls", {}).get("mode") == "STRICT" and not pa["spec"].get("selector")
               for pa in pas):
        problems.append("no namespace-wide PeerAuthentication with mtls STRICT")
    for pa in pas:
        if pa["spec"].get("mtls", {}).get("mode") not in (None, "STRICT"):
            problems.append(f"PeerAuthentication {pa['metadata']['name']} weakens mTLS for a whole workload")
        app = pa["spec"].get("selector", {}).get("matchLabels", {}).get("app")
        for port, setting in (pa["spec"].get("portLevelMtls") or {}).items():
            if setting.get("mode") != "STRICT" and int(port) != METRICS_PORTS.get(app):
                problems.append(f"PeerAuthentication {pa['metadata']['name']}: port {port} not STRICT")
    callers = {"objectdetection": {INGRESS_PRINCIPAL},
               "facedetection": {f"cluster.local/ns/{NAMESPACE}/sa/objectdetection"},
               "yolodetection": {f"cluster.local/ns/{NAMESPACE}/sa/objectdetection"}}
    aps = {ap["spec"].get("selector", {}).get("matchLabels", {}).get("app"): ap
           for ap in of_kind(ds, "AuthorizationPolicy")}
    for app, allowed in callers.items():
        ap = aps.get(app)
        if ap is None or ap["spec"].get("action", "ALLOW") != "ALLOW":
            problems.append(f"no ALLOW AuthorizationPolicy for app={app}")
            continue
        grpc_sources: list[set[str] | None] = []
        for rule in ap["spec"].get("rules", []):
            ports = {int(p) for t in rule.get("to", []) for p in t.get("operation", {}).get("ports", [])}
            if not ports:
                problems.append(f"AuthorizationPolicy {app}: a rule without ports opens every port")
            if GRPC_PORTS[app] in ports:
                srcs = rule.get("from")
                grpc_sources.append(None if not srcs else
                                    {p for s in srcs for p in s.get("source", {}).get("principals", [])})
        if grpc_sources != [allowed]:
            problems.append(f"AuthorizationPolicy {app}: gRPC port {GRPC_PORTS[app]} "
                            f"open to {grpc_sources}, want {allowed}")
    return problems


def nodeport_problems(docs: Docs) -> list[str]:
    """opt-in/security-nodeport.yaml: replaces security.yaml's objectdetection objects, opens only 50051."""
    problems = []
    ds = docs.get(NODEPORT_FILE, [])
    base = {(d["kind"], d["metadata"]["name"]): d for d in docs.get("security.yaml", [])}
    if not ds:
        problems.append(f"{NODEPORT_FILE} is empty")
    for d in ds:
        key = (d["kind"], d["metadata"]["name"])
        if key not in base:
            problems.append(f"{NODEPORT_FILE}: {key} does not replace an object of security.yaml")
        if d["spec"].get("selector", {}).get("matchLabels") != {"app": "objectdetection"}:
            problems.append(f"{NODEPORT_FILE}: {key} must select app=objectdetection only")
    pa = next((d for d in of_kind(ds, "PeerAuthentication")), None)
    port_mtls = (pa["spec"].get("portLevelMtls") or {}) if pa else {}
    if port_mtls.get(str(GRPC_PORTS["objectdetection"]), {}).get("mode") != "PERMISSIVE":
        problems.append(f"{NODEPORT_FILE}: objectdetection port 50051 is not PERMISSIVE")
    return problems


def gateway_problems(docs: Docs) -> list[str]:
    """Gateway on the ingress gateway's 31400 gRPC port; a VirtualService binds it by name."""
    problems = []
    gws = of_kind(docs.get("gateway.yaml", []), "Gateway")
    if len(gws) != 1:
        return [f"gateway.yaml: want one Gateway, found {len(gws)}"]
    gw = gws[0]
    if gw["spec"].get("selector") != {"istio": "ingressgateway"}:
        problems.append(f"Gateway selector {gw['spec'].get('selector')} is not istio=ingressgateway")
    servers = [s for s in gw["spec"]["servers"] if s["port"]["number"] == GATEWAY_PORT]
    if not servers or servers[0]["port"].get("protocol") not in ("GRPC", "HTTP2"):
        problems.append(f"Gateway has no GRPC/HTTP2 server on port {GATEWAY_PORT}")
    name = gw["metadata"]["name"]
    refs = {name, f"{gw['metadata']['namespace']}/{name}"}
    for fname, ds in docs.items():
        for vs in of_kind(ds, "VirtualService"):
            gateways = vs["spec"].get("gateways", [])
            if gateway_bound(vs) and not set(gateways) & refs:
                problems.append(f"{fname}: {vs['metadata']['name']} binds unknown gateways {gateways}")
    bound = [vs for vs in of_kind(docs.get(BASELINE, []), "VirtualService")
             if set(vs["spec"].get("gateways", [])) & refs]
    if len(bound) != 1:
        problems.append(f"{BASELINE}: want one VirtualService bound to Gateway {name}, found {len(bound)}")
    elif ({(d["host"].split(".")[0], d["port"]["number"]) for d in destinations(bound[0])}
          != {("objectdetection", GRPC_PORTS["objectdetection"])}):
        problems.append(f"VirtualService on {name} does not route to objectdetection:50051")
    return problems


def locality_problems(docs: Docs) -> list[str]:
    """Locality failover edge -> cloud, with outlierDetection in the same trafficPolicy."""
    problems = []
    drs = of_kind(docs.get("destination-rules.yaml", []), "DestinationRule")
    if not drs:
        problems.append("no DestinationRules")
    for dr in drs:
        name = dr["metadata"]["name"]
        policies = [("service", dr["spec"].get("trafficPolicy") or {})]
        policies += [(f"subset {s['name']}", s["trafficPolicy"]) for s in dr["spec"].get("subsets", [])
                     if s.get("trafficPolicy")]
        for where, tp in policies:
            lls = tp.get("loadBalancer", {}).get("localityLbSetting")
            if lls and lls.get("failover") and not tp.get("outlierDetection"):
                problems.append(f"{name} {where}: locality failover without outlierDetection (Istio ignores it)")
        tp = policies[0][1]
        failover = tp.get("loadBalancer", {}).get("localityLbSetting", {}).get("failover", [])
        if {"from": "edge", "to": "cloud"} not in failover:
            problems.append(f"{name}: no locality failover from edge to cloud")
        od = tp.get("outlierDetection") or {}
        if not (od.get("consecutiveGatewayErrors") or od.get("consecutive5xxErrors")):
            problems.append(f"{name}: outlierDetection ejects on no error count")
        for key in ("interval", "baseEjectionTime"):
            try:
                duration_s(od.get(key))
            except ValueError as err:
                problems.append(f"{name}: outlierDetection.{key}: {err}")
        if od.get("maxEjectionPercent", 10) < 100:
            problems.append(f"{name}: maxEjectionPercent < 100 can keep a sick last edge pod in service")
        pool = tp.get("connectionPool", {}).get("http", {})
        if pool.get("maxRequestsPerConnection") == 1:
            problems.append(f"{name}: maxRequestsPerConnection 1 reconnects for every gRPC call")
    return problems


def _single_vs(docs: Docs, fname: str) -> Doc | None:
    ds = docs.get(fname, [])
    return ds[0] if len(ds) == 1 and ds[0].get("kind") == "VirtualService" else None


def step_problems(docs: Docs) -> list[str]:
    """Step files: one VirtualService each, named like the baseline's, weights as the file name says."""
    problems = []
    missing = CONTRACT_FILES - set(docs)
    if missing:
        problems.append(f"contract files missing: {sorted(missing)}")
    baseline = {destinations(vs)[0]["host"]: vs["metadata"]["name"]
                for vs in of_kind(docs.get(BASELINE, []), "VirtualService")}
    if len(baseline) != 3:
        problems.append(f"{BASELINE}: want one VirtualService per host for 3 hosts, found {sorted(baseline)}")
    steps = {f: list(zip(("v1", "v2"), w, strict=True)) for f, w in zip(YOLO_STEP_FILES, YOLO_STEPS, strict=True)}
    steps |= {f: [("edge", e), ("cloud", c)] for f, (e, c) in OD_STEP_FILES.items()}
    for fname in [*steps, HEADER_FILE, FAULT_FILE]:
        vs = _single_vs(docs, fname)
        if vs is None:
            problems.append(f"{fname}: want exactly one VirtualService")
            continue
        host = destinations(vs)[0]["host"]
        if baseline.get(host) != vs["metadata"]["name"]:
            problems.append(f"{fname}: name {vs['metadata']['name']} does not replace the baseline's for {host}")
        if fname in steps:
            if len(vs["spec"]["http"]) != 1:
                problems.append(f"{fname}: a step file has one route")
            elif route_weights(vs) != steps[fname]:
                problems.append(f"{fname}: weights {route_weights(vs)} != {steps[fname]}")
    od = [vs for vs in of_kind(everything(docs), "VirtualService") if vs["metadata"]["name"] == "objectdetection"]
    if len({repr((vs["spec"].get("hosts"), vs["spec"].get("gateways"))) for vs in od}) != 1:
        problems.append("objectdetection VirtualServices disagree on hosts/gateways")
    for fname in docs:
        known = fname in steps or fname in (BASELINE, HEADER_FILE, FAULT_FILE)
        in_steps = fname.startswith((f"{STEPS}/", f"{FAULTS}/"))
        if (in_steps or Path(fname).name.split("-")[0] in GRPC_PORTS) and not known:
            problems.append(f"{fname}: a step file the tests do not know")
    return problems


def header_problems(docs: Docs) -> list[str]:
    vs = _single_vs(docs, HEADER_FILE)
    if vs is None:
        return [f"{HEADER_FILE}: want one VirtualService"]
    rules = vs["spec"]["http"]
    first, last = rules[0], rules[-1]
    problems = []
    headers = [m.get("headers", {}) for m in first.get("match", [])]
    if headers != [{"x-robot-id": {"exact": "2"}}]:
        problems.append(f"{HEADER_FILE}: first route matches {headers}, want x-robot-id exact 2")
    if {r["destination"]["subset"] for r in first["route"]} != {"v2"}:
        problems.append(f"{HEADER_FILE}: robot 2 is not routed to v2")
    if len(rules) < 2 or last.get("match") or {r["destination"]["subset"] for r in last["route"]} != {"v1"}:
        problems.append(f"{HEADER_FILE}: last route must catch every other call and send it to v1")
    return problems


def fault_problems(docs: Docs) -> list[str]:
    vs = _single_vs(docs, FAULT_FILE)
    if vs is None:
        return [f"{FAULT_FILE}: want one VirtualService"]
    problems = []
    for rule in vs["spec"]["http"]:
        delay = (rule.get("fault") or {}).get("delay")
        if not delay:
            problems.append(f"{FAULT_FILE}: route {rule.get('name')} has no fault.delay")
            continue
        try:
            if duration_s(delay.get("fixedDelay")) <= 0:
                problems.append(f"{FAULT_FILE}: zero delay")
        except ValueError as err:
            problems.append(f"{FAULT_FILE}: fixedDelay: {err}")
        if delay.get("percentage", {}).get("value") != 100:
            problems.append(f"{FAULT_FILE}: delay applies to {delay.get('percentage')} not 100 %")
    return problems


def _object_key(d: Doc) -> tuple[str, str, str]:
    meta = d.get("metadata") or {}
    return d.get("kind", ""), meta.get("namespace", NAMESPACE), meta.get("name", "")


def layout_problems(docs: Docs) -> list[str]:
    """`kubectl apply -f istio` applies the baseline only, unambiguously; the subfolders replace parts of it.

    The top level (all that kubectl reads without -R) holds the baseline files, no two objects of one kind,
    namespace and name (kubectl would apply both, the later silently winning) and one VirtualService per
    host. A file in steps/ or faults/ holds VirtualServices, one in opt-in/ security objects; each object
    replaces a baseline object (same kind, namespace and name), and a VirtualService routes the host that
    its baseline namesake routes.
    """
    problems = []
    top = top_level(docs)
    if set(top) != TOP_LEVEL:
        problems.append(f"istio/ top level holds {sorted(top)}; want the baseline {sorted(TOP_LEVEL)} only")
    baseline: dict[tuple[str, str, str], str] = {}
    for fname, ds in top.items():
        for d in ds:
            key = _object_key(d)
            if key in baseline:
                problems.append(f"{fname}: {key} is also in {baseline[key]}: kubectl apply -f istio applies both")
            baseline.setdefault(key, fname)
    routes: dict[tuple[str, str], str] = {}  # (service, namespace) -> name of its baseline VirtualService
    for vs in of_kind(everything(top), "VirtualService"):
        for host in {service_of(d["host"]) for d in destinations(vs)}:
            if host in routes:
                problems.append(f"baseline VirtualServices {routes[host]} and {vs['metadata']['name']} "
                                f"both route {host}")
            routes.setdefault(host, vs["metadata"]["name"])
    kinds = {STEPS: {"VirtualService"}, FAULTS: {"VirtualService"},
             OPT_IN: {"PeerAuthentication", "AuthorizationPolicy"}}
    for fname, ds in docs.items():
        if fname in top:
            continue
        folder = fname.split("/")[0]
        if folder not in kinds or fname.count("/") != 1:
            problems.append(f"{fname}: outside {sorted(kinds)} (kubectl apply -f istio/<folder> must stay meaningful)")
            continue
        if not ds:
            problems.append(f"{fname}: no documents")
        for d in ds:
            key = _object_key(d)
            if key[0] not in kinds[folder]:
                problems.append(f"{fname}: a {key[0]} does not belong in {folder}/")
            if key not in baseline:
                problems.append(f"{fname}: {key[0]} {key[2]} replaces no object of the baseline (istio/*.yaml)")
            if key[0] == "VirtualService":
                for host in {service_of(dest["host"]) for dest in destinations(d)}:
                    if routes.get(host) != key[2]:
                        problems.append(f"{fname}: routes {host[0]}, whose baseline VirtualService is "
                                        f"{routes.get(host)!r}, not {key[2]!r}")
    return problems


# ----------------------------------------------------------------------------- tests on the real files


def test_kubectl_apply_f_istio_reads_the_baseline_only():
    assert {p.name for p in kubectl_files(ISTIO)} == TOP_LEVEL

def test_every_file_parses_and_the_contract_files_exist(istio):
    assert set(istio) >= CONTRACT_FILES, sorted(CONTRACT_FILES - set(istio))
    for name, ds in istio.items():
        assert ds and all(isinstance(d, dict) for d in ds), name


def test_schema(istio):
    assert schema_problems(istio) == []


@pytest.mark.parametrize("check", [subset_problems, route_problems, security_problems, nodeport_problems,
                                   gateway_problems, locality_problems, step_problems, header_problems,
                                   fault_problems, layout_problems], ids=lambda f: f.__name__)
def test_semantics(istio, check):
    assert check(istio) == []


@pytest.mark.parametrize("check", [subset_label_problems, host_problems, principal_problems],
                         ids=lambda f: f.__name__)
def test_against_kube(istio, kube, check):
    assert check(istio, everything(kube)) == []


def test_duration_parser():
    assert duration_s("1s") == 1.0
    assert duration_s("400ms") == pytest.approx(0.4)
    assert duration_s("1m30s") == 90.0
    for bad in ("1", "1 s", "1sec", "", None, 1):
        with pytest.raises(ValueError):
            duration_s(bad)


def test_host_names():
    assert service_of("yolodetection") == ("yolodetection", NAMESPACE)
    assert service_of("yolodetection.robodemo") == ("yolodetection", "robodemo")
    assert service_of("yolodetection.other.svc.cluster.local") == ("yolodetection", "other")
    with pytest.raises(ValueError):
        service_of("example.com.au")


# ----------------------------------------------------------------------------- every check can fail

def _vs(docs: Docs, fname: str, name: str | None = None) -> Doc:
    return next(d for d in docs[fname] if d["kind"] == "VirtualService" and name in (None, d["metadata"]["name"]))


def _dr(docs: Docs, name: str) -> Doc:
    return next(d for d in docs["destination-rules.yaml"] if d["metadata"]["name"] == name)


def _obj(docs: Docs, fname: str, kind: str, name: str) -> Doc:
    return next(d for d in docs[fname] if d["kind"] == kind and d["metadata"]["name"] == name)


def _set(d: Doc, path: str, value) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
    d[keys[-1]] = value


Mutation = Callable[[Docs], None]
MUTATIONS: list[tuple[str, Mutation, Callable[[Docs], list[str]]]] = [
    ("misspelled field", lambda d: _set(_vs(d, BASELINE, "yolodetection")["spec"]["http"][0], "timout", "1s"),
     schema_problems),
    ("old apiVersion", lambda d: _set(_dr(d, "yolodetection"), "apiVersion", "networking.istio.io/v1alpha3"),
     schema_problems),
    ("wrong namespace", lambda d: _set(_dr(d, "yolodetection")["metadata"], "namespace", "default"),
     schema_problems),
    ("undeclared subset", lambda d: _set(destinations(_vs(d, YOLO_50_50))[1], "subset", "v9"),
     subset_problems),
    ("subset declared twice", lambda d: _dr(d, "yolodetection")["spec"]["subsets"].append(
        {"name": "v1", "labels": {"version": "v1"}}), subset_problems),
    ("contract subset missing", lambda d: _dr(d, "facedetection")["spec"].update(subsets=[]), subset_problems),
    ("DestinationRule outside its file", lambda d: d[FAULT_FILE].append(copy.deepcopy(_dr(d, "facedetection"))),
     subset_problems),
    ("weights 90+20", lambda d: _set(_vs(d, YOLO_90_10)["spec"]["http"][0]["route"][1],
                                     "weight", 20), route_problems),
    ("timeout over 1 s", lambda d: _set(_vs(d, BASELINE, "facedetection")["spec"]["http"][0], "timeout", "2s"),
     route_problems),
    ("retries longer than timeout", lambda d: _set(
        _vs(d, BASELINE, "objectdetection")["spec"]["http"][0]["retries"], "perTryTimeout", "600ms"), route_problems),
    ("retryOn typo", lambda d: _set(_vs(d, HEADER_FILE)["spec"]["http"][1]["retries"], "retryOn", "unavailble"),
     route_problems),
    ("no timeout", lambda d: _vs(d, FAULT_FILE)["spec"]["http"][0].pop("timeout"), route_problems),
    ("no retries", lambda d: _vs(d, FAULT_FILE)["spec"]["http"][0].pop("retries"), route_problems),
    ("no STRICT", lambda d: _set(_obj(d, "security.yaml", "PeerAuthentication", "default")["spec"]["mtls"], "mode",
                                 "PERMISSIVE"), security_problems),
    ("gRPC port PERMISSIVE in security.yaml", lambda d: _obj(d, "security.yaml", "PeerAuthentication", "yolodetection")[
        "spec"]["portLevelMtls"].update({"50055": {"mode": "PERMISSIVE"}}), security_problems),
    ("detector open to anyone", lambda d: _obj(d, "security.yaml", "AuthorizationPolicy", "yolodetection")["spec"][
        "rules"][0].pop("from"), security_problems),
    ("objectdetection open to a detector", lambda d: _obj(d, "security.yaml", "AuthorizationPolicy", "objectdetection")[
        "spec"]["rules"][0]["from"][0]["source"]["principals"].append("cluster.local/ns/robodemo/sa/yolodetection"),
     security_problems),
    ("rule without ports", lambda d: _obj(d, "security.yaml", "AuthorizationPolicy", "facedetection")["spec"][
        "rules"][1].pop("to"), security_problems),
    ("nodeport file under another name", lambda d: _set(
        _obj(d, NODEPORT_FILE, "PeerAuthentication", "objectdetection")["metadata"], "name", "nodeport"),
     nodeport_problems),
    ("nodeport file keeps 50051 STRICT", lambda d: _obj(d, NODEPORT_FILE, "PeerAuthentication",
                                                        "objectdetection")["spec"]["portLevelMtls"].pop("50051"),
     nodeport_problems),
    ("VS binds another gateway", lambda d: _set(_vs(d, BASELINE, "objectdetection")["spec"], "gateways", ["other"]),
     gateway_problems),
    ("gateway on TCP", lambda d: _set(d["gateway.yaml"][0]["spec"]["servers"][0]["port"], "protocol", "TCP"),
     gateway_problems),
    ("gateway selector", lambda d: _set(d["gateway.yaml"][0]["spec"], "selector", {"app": "gw"}), gateway_problems),
    ("failover without outlierDetection", lambda d: _dr(d, "objectdetection")["spec"]["trafficPolicy"].pop(
        "outlierDetection"), locality_problems),
    ("no failover", lambda d: _dr(d, "yolodetection")["spec"]["trafficPolicy"]["loadBalancer"].pop(
        "localityLbSetting"), locality_problems),
    ("subset policy drops outlierDetection", lambda d: _dr(d, "yolodetection")["spec"]["subsets"][0].update(
        trafficPolicy={"loadBalancer": {"localityLbSetting": {"failover": [{"from": "edge", "to": "cloud"}]}}}),
     locality_problems),
    ("maxEjectionPercent 50", lambda d: _set(_dr(d, "facedetection")["spec"]["trafficPolicy"]["outlierDetection"],
                                             "maxEjectionPercent", 50), locality_problems),
    ("one connection per call", lambda d: _set(_dr(d, "facedetection")["spec"]["trafficPolicy"]["connectionPool"][
        "http"], "maxRequestsPerConnection", 1), locality_problems),
    ("step weights swapped", lambda d: [_set(r, "weight", w) for r, w in zip(
        _vs(d, YOLO_90_10)["spec"]["http"][0]["route"], (10, 90), strict=True)], step_problems),
    ("step subsets reordered", lambda d: _vs(d, OD_50_50)["spec"]["http"][0][
        "route"].reverse(), step_problems),
    ("step file renamed VS", lambda d: _set(_vs(d, OD_CLOUD)["metadata"], "name", "od-cloud"),
     step_problems),
    ("step file missing", lambda d: d.pop(YOLO_50_50), step_problems),
    ("unknown step file", lambda d: d.update({f"{STEPS}/yolodetection-shift-70-30.yaml": copy.deepcopy(
        d[YOLO_50_50])}), step_problems),
    ("step on the mesh only", lambda d: _vs(d, OD_EDGE)["spec"].pop("gateways"), step_problems),
    ("header route on another header", lambda d: _set(_vs(d, HEADER_FILE)["spec"]["http"][0]["match"][0], "headers",
                                                      {"x-user": {"exact": "2"}}), header_problems),
    ("header route without default", lambda d: _vs(d, HEADER_FILE)["spec"]["http"].pop(), header_problems),
    ("fault on half the calls", lambda d: _set(_vs(d, FAULT_FILE)["spec"]["http"][0]["fault"]["delay"]["percentage"],
                                               "value", 50), fault_problems),
    ("fault removed", lambda d: _vs(d, FAULT_FILE)["spec"]["http"][0].pop("fault"), fault_problems),
    ("step file at the top level", lambda d: d.update({"yolodetection-shift-90-10.yaml": copy.deepcopy(d[YOLO_90_10])}),
     layout_problems),
    ("one name twice at the top level", lambda d: d["security.yaml"].append(copy.deepcopy(
        _obj(d, NODEPORT_FILE, "PeerAuthentication", "objectdetection"))), layout_problems),
    ("step for a host without a baseline", lambda d: d.update({BASELINE: [
        vs for vs in d[BASELINE] if vs["metadata"]["name"] != "yolodetection"]}), layout_problems),
    ("fault named after another host", lambda d: _set(_vs(d, FAULT_FILE)["metadata"], "name", "facedetection"),
     layout_problems),
    ("file in an unknown folder", lambda d: d.update({"experiments/x.yaml": copy.deepcopy(d[YOLO_50_50])}),
     layout_problems),
    ("security object among the steps", lambda d: d[OD_EDGE].append(copy.deepcopy(
        _obj(d, "security.yaml", "PeerAuthentication", "default"))), layout_problems),
]


@pytest.mark.parametrize("mutate,check", [(m, c) for _, m, c in MUTATIONS], ids=[n for n, _, _ in MUTATIONS])
def test_each_check_catches_a_broken_copy(istio, mutate, check):
    broken = copy.deepcopy(istio)
    mutate(broken)
    assert check(broken), f"{check.__name__} did not notice"


KUBE_MUTATIONS: list[tuple[str, Callable[[Docs, list[Doc]], None], Callable[[Docs, list[Doc]], list[str]]]] = [
    ("subset label on no pod", lambda d, k: _dr(d, "yolodetection")["spec"]["subsets"][2].update(
        labels={"version": "v4"}), subset_label_problems),
    ("pod template relabelled", lambda d, k: [t["metadata"]["labels"].update(site="moon")
                                               for n, t in pod_templates(k) if n == "objectdetection-cloud"],
     subset_label_problems),
    ("DestinationRule for a missing Service", lambda d, k: _set(_dr(d, "facedetection")["spec"], "host",
                                                                "facefinder.robodemo.svc.cluster.local"),
     subset_label_problems),
    ("destination not a Service", lambda d, k: _set(destinations(_vs(d, BASELINE, "facedetection"))[0], "host",
                                                    "facefinder.robodemo.svc.cluster.local"), host_problems),
    ("destination on the metrics port", lambda d, k: _set(destinations(_vs(d, BASELINE, "yolodetection"))[0]["port"],
                                                          "number", 9095), host_problems),
    ("mesh host not a Service", lambda d, k: _set(_vs(d, BASELINE, "yolodetection")["spec"], "hosts", ["yolo"]),
     host_problems),
    ("two hosts in one VS", lambda d, k: _vs(d, BASELINE, "yolodetection")["spec"]["http"][0]["route"].append(
        {"destination": {"host": "facedetection.robodemo.svc.cluster.local", "subset": "v1",
                         "port": {"number": 50053}}, "weight": 0}), host_problems),
    ("principal of a missing account", lambda d, k: _set(
        _obj(d, "security.yaml", "AuthorizationPolicy", "yolodetection")["spec"]["rules"][0]["from"][0]["source"],
        "principals", ["cluster.local/ns/robodemo/sa/aggregator"]), principal_problems),
]


@pytest.mark.parametrize("mutate,check", [(m, c) for _, m, c in KUBE_MUTATIONS], ids=[n for n, _, _ in KUBE_MUTATIONS])
def test_each_kube_check_catches_a_broken_copy(istio, kube, mutate, check):
    broken, kube_docs = copy.deepcopy(istio), copy.deepcopy(everything(kube))
    mutate(broken, kube_docs)
    assert check(broken, kube_docs), f"{check.__name__} did not notice"
