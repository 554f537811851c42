"""Istio VirtualServices → an Envoy bootstrap, so that mesh step files can be tried on loopback.

Pure: dictionaries in, dictionaries out (``to_yaml`` for the text). The same
Envoy that Istio programs in every sidecar then splits, routes, retries and
delays calls exactly as the cluster would, without a cluster: weighted
clusters split per call at random, header matches go first in file order,
retries stay inside the chosen subset. Subsets become STATIC clusters whose
endpoints the caller maps (subset → host:port), since there is no Kubernetes
to select pods by label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROUTE_CONFIG_NAME = "local_route"
FAULT_FILTER = "envoy.filters.http.fault"
_FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_H2_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# What Istio programs when a route has no ``retries`` (istio/istio pilot/pkg/networking/core/route/retry).
ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
ISTIO_DEFAULT_ATTEMPTS = 2
_SUPPORTED_HTTP_KEYS = frozenset({"name", "match", "route", "timeout", "retries", "fault"})
_SUPPORTED_MATCH_KEYS = frozenset({"name", "headers", "uri"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(h|m|s|ms|us)$")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class Endpoint:
    """Where a subset's pods are on this machine."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"endpoint must be HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))


def parse_endpoints(text: str) -> dict[str, Endpoint]:
    """``v1=127.0.0.1:5001,v2=127.0.0.1:5002`` → {subset: Endpoint}."""
    mapping: dict[str, Endpoint] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        subset, sep, address = item.partition("=")
        if not sep:
            raise ValueError(f"expected SUBSET=HOST:PORT, got {item!r}")
        mapping[subset.strip()] = Endpoint.parse(address.strip())
    return mapping


def short_host(host: str) -> str:
    """``yolodetection.robodemo.svc.cluster.local`` and ``yolodetection`` name the same Service."""
    return host.split(".", 1)[0]


def duration_s(text: str | int | float) -> float:
    """Istio/protobuf duration (``1s``, ``800ms``, ``0.5s``) in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    found = _DURATION.match(text.strip())
    if not found:
        raise ValueError(f"not a duration: {text!r}")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def envoy_duration(text: str | int | float) -> str:
    """Envoy's JSON duration form: seconds with up to 9 decimals and an ``s``."""
    return f"{round(duration_s(text), 9):.9f}".rstrip("0").rstrip(".") + "s"


def cluster_name(host: str, subset: str) -> str:
    """Istio's naming (``outbound|PORT|SUBSET|HOST``) without the port: one local listener per host."""
    return f"outbound||{subset}|{short_host(host)}"


def virtual_services(documents: Iterable[Any]) -> list[dict[str, Any]]:
    """The VirtualService objects among parsed YAML documents (other kinds are skipped)."""
    return [d for d in documents if isinstance(d, dict) and d.get("kind") == "VirtualService"]


def for_host(services: Sequence[Mapping[str, Any]], host: str) -> Mapping[str, Any]:
    """The one VirtualService that routes ``host``; the last one wins, as when step files are applied in order."""
    wanted = short_host(host)
    matching = [vs for vs in services if wanted in routed_hosts(vs)]
    if not matching:
        raise ValueError(f"no VirtualService routes host {host!r}")
    return matching[-1]


def routed_hosts(service: Mapping[str, Any]) -> set[str]:
    """The short hosts a VirtualService routes. A gateway-bound one has ``hosts: ["*"]`` (the robot's
    request names the gateway, not a service): then the hosts it routes to are its destinations."""
    spec = service.get("spec", {})
    hosts = {short_host(h) for h in spec.get("hosts", []) if h != "*"}
    if "*" in spec.get("hosts", []):
        hosts |= {short_host(r["destination"]["host"]) for http in spec.get("http", []) for r in http.get("route", [])
                  if r.get("destination", {}).get("host")}
    return hosts


def destination_rules(documents: Iterable[Any]) -> list[dict[str, Any]]:
    return [d for d in documents if isinstance(d, dict) and d.get("kind") == "DestinationRule"]


def subsets(rules: Sequence[Mapping[str, Any]], host: str) -> dict[str, dict[str, str]]:
    """Subset name → pod labels for ``host``: tells which local server stands in for which subset."""
    found: dict[str, dict[str, str]] = {}
    for rule in rules:
        spec = rule.get("spec", {})
        if short_host(spec.get("host", "")) == short_host(host):
            found.update({s["name"]: dict(s.get("labels", {})) for s in spec.get("subsets", [])})
    return found


def weights_virtual_service(host: str, weights: Mapping[str, int], name: str | None = None) -> dict[str, Any]:
    """A one-route VirtualService splitting ``host`` over subsets: the schedule's ``weights:`` shortcut."""
    if sum(weights.values()) != 100:
        raise ValueError(f"weights must sum to 100, got {dict(weights)}")
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name or short_host(host)},
        "spec": {"hosts": [host], "http": [{"route": [
            {"destination": {"host": host, "subset": subset}, "weight": int(weight)}
            for subset, weight in weights.items()
        ]}]},
    }


def _string_match(spec: Mapping[str, Any]) -> dict[str, Any]:
    if len(spec) != 1:
        raise ValueError(f"a string match takes exactly one of exact/prefix/regex, got {dict(spec)}")
    kind, value = next(iter(spec.items()))
    if kind in ("exact", "prefix"):
        return {kind: str(value)}
    if kind == "regex":
        return {"safe_regex": {"regex": str(value)}}
    raise ValueError(f"unsupported string match {kind!r}")


def route_match(match: Mapping[str, Any] | None) -> dict[str, Any]:
    """One Istio ``HTTPMatchRequest`` (conditions ANDed) → one Envoy ``RouteMatch``."""
    match = match or {}
    unsupported = set(match) - _SUPPORTED_MATCH_KEYS
    if unsupported:
        raise ValueError(f"unsupported match fields {sorted(unsupported)}")
    envoy: dict[str, Any] = {"prefix": "/"}
    if "uri" in match:
        uri = _string_match(match["uri"])
        envoy = {"path": uri["exact"]} if "exact" in uri else uri
    headers = [{"name": name, "string_match": _string_match(spec)}
               for name, spec in (match.get("headers") or {}).items()]
    if headers:
        envoy["headers"] = headers
    return envoy


def _percentage(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Istio ``percentage.value`` (0..100, fractions allowed) or the old integer ``percent``; default 100."""
    value = float(spec["percentage"].get("value", 0.0)) if "percentage" in spec else float(spec.get("percent", 100))
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"percentage out of 0..100: {value}")
    return {"numerator": round(value * 10_000), "denominator": "MILLION"}


def fault_config(fault: Mapping[str, Any]) -> dict[str, Any]:
    """Istio ``HTTPFaultInjection`` → the per-route ``HTTPFault`` of Envoy's fault filter."""
    config: dict[str, Any] = {"@type": _FAULT_TYPE}
    delay = fault.get("delay")
    if delay:
        if "fixedDelay" not in delay:
            raise ValueError("only fault.delay.fixedDelay is supported")
        config["delay"] = {"fixed_delay": envoy_duration(delay["fixedDelay"]), "percentage": _percentage(delay)}
    abort = fault.get("abort")
    if abort:
        if "grpcStatus" in abort:
            status = abort["grpcStatus"]
            config["abort"] = {"grpc_status": _grpc_code(status), "percentage": _percentage(abort)}
        elif "httpStatus" in abort:
            config["abort"] = {"http_status": int(abort["httpStatus"]), "percentage": _percentage(abort)}
        else:
            raise ValueError("fault.abort needs grpcStatus or httpStatus")
    return config


_GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
               "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
               "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


def _grpc_code(status: str | int) -> int:
    return status if isinstance(status, int) else _GRPC_CODES.index(str(status).upper())


def retry_policy(retries: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Istio ``HTTPRetry`` → Envoy ``RetryPolicy``; absent means Istio's default, ``attempts: 0`` none at all."""
    if retries is None:
        return {"retry_on": ISTIO_DEFAULT_RETRY_ON, "num_retries": ISTIO_DEFAULT_ATTEMPTS,
                "retriable_status_codes": [503]}
    attempts = int(retries.get("attempts", 0))
    if attempts <= 0:
        return None
    policy: dict[str, Any] = {"retry_on": str(retries.get("retryOn", ISTIO_DEFAULT_RETRY_ON)), "num_retries": attempts}
    if "perTryTimeout" in retries:
        policy["per_try_timeout"] = envoy_duration(retries["perTryTimeout"])
    return policy


def route_action(http: Mapping[str, Any], host: str) -> dict[str, Any]:
    """Destinations, timeout and retries of one Istio ``HTTPRoute``."""
    destinations = http.get("route") or []
    if not destinations:
        raise ValueError(f"route {http.get('name', '')!r} has no destinations")
    names: list[tuple[str, int]] = []
    for destination in destinations:
        target = destination["destination"]
        if short_host(target["host"]) != short_host(host):
            raise ValueError(f"destination host {target['host']!r} is not {host!r}: one listener per host")
        names.append((cluster_name(host, target.get("subset", "")), int(destination.get("weight", 100))))
    action: dict[str, Any]
    if len(names) == 1:
        action = {"cluster": names[0][0]}
    else:
        if sum(w for _, w in names) != 100:
            raise ValueError(f"weights must sum to 100, got {[w for _, w in names]}")
        # Envoy refuses a zero weight in some versions and never picks one anyway: leave those out.
        action = {"weighted_clusters": {"clusters": [{"name": n, "weight": w} for n, w in names if w > 0]}}
    # Istio's default is no route timeout; the caller's grpc-timeout still bounds the call.
    action["timeout"] = envoy_duration(http.get("timeout", "0s"))
    action["max_stream_duration"] = {"grpc_timeout_header_max": "0s"}
    policy = retry_policy(http.get("retries"))
    if policy is not None:
        action["retry_policy"] = policy
    return action


def route_configuration(service: Mapping[str, Any], host: str, name: str = ROUTE_CONFIG_NAME) -> dict[str, Any]:
    """A VirtualService's ``http`` routes → one Envoy ``RouteConfiguration``: first match wins, as in Istio."""
    routes: list[dict[str, Any]] = []
    for index, http in enumerate(service.get("spec", {}).get("http") or []):
        unsupported = set(http) - _SUPPORTED_HTTP_KEYS
        if unsupported:
            raise ValueError(f"http[{index}]: unsupported fields {sorted(unsupported)}")
        action = route_action(http, host)
        per_filter = {FAULT_FILTER: fault_config(http["fault"])} if http.get("fault") else None
        for match in http.get("match") or [None]:
            route: dict[str, Any] = {"name": http.get("name", f"http-{index}"), "match": route_match(match),
                                     "route": action}
            if per_filter:
                route["typed_per_filter_config"] = per_filter
            routes.append(route)
    if not routes:
        raise ValueError("the VirtualService has no http routes")
    return {"name": name, "virtual_hosts": [{"name": short_host(host), "domains": ["*"], "routes": routes}]}


def referenced_clusters(route_config: Mapping[str, Any]) -> set[str]:
    """Every cluster a route configuration can send to (to check them against the defined ones)."""
    names: set[str] = set()
    for vhost in route_config["virtual_hosts"]:
        for route in vhost["routes"]:
            action = route["route"]
            if "cluster" in action:
                names.add(action["cluster"])
            names.update(c["name"] for c in action.get("weighted_clusters", {}).get("clusters", []))
    return names


def clusters(host: str, endpoints: Mapping[str, Endpoint], connect_timeout_s: float = 1.0) -> list[dict[str, Any]]:
    """One STATIC HTTP/2 cluster per subset (gRPC needs HTTP/2 upstream; Envoy defaults to HTTP/1.1)."""
    return [
        {
            "name": cluster_name(host, subset),
            "type": "STATIC",
            "connect_timeout": envoy_duration(connect_timeout_s),
            "lb_policy": "ROUND_ROBIN",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _H2_OPTIONS_TYPE, "explicit_http_config": {"http2_protocol_options": {}},
                },
            },
            "load_assignment": {"cluster_name": cluster_name(host, subset), "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": ep.host, "port_value": ep.port}}}},
            ]}]},
        }
        for subset, ep in sorted(endpoints.items())
    ]


def rds_source(path: str, watched_directory: str) -> dict[str, Any]:
    """Routes read from a file; Envoy reloads them when a new file is renamed into the watched directory."""
    return {"route_config_name": ROUTE_CONFIG_NAME, "config_source": {
        "resource_api_version": "V3",
        "path_config_source": {"path": path, "watched_directory": {"path": watched_directory}},
    }}


def discovery_response(route_config: Mapping[str, Any], version: str) -> dict[str, Any]:
    """The file form of filesystem RDS: a DiscoveryResponse holding one RouteConfiguration."""
    return {"version_info": version, "resources": [{"@type": _ROUTE_TYPE, **route_config}]}


def bootstrap(
    *,
    listen_port: int,
    admin_port: int,
    cluster_list: Sequence[Mapping[str, Any]],
    route_config: Mapping[str, Any] | None = None,
    rds: Mapping[str, Any] | None = None,
    listen_address: str = "127.0.0.1",
) -> dict[str, Any]:
    """A complete static bootstrap: one listener (HTTP/1.1 or HTTP/2, sniffed), fault + router filters."""
    if (route_config is None) == (rds is None):
        raise ValueError("give exactly one of route_config (static) or rds (file-watched)")
    if route_config is not None:
        missing = referenced_clusters(route_config) - {c["name"] for c in cluster_list}
        if missing:
            raise ValueError(f"routes use clusters with no endpoints: {sorted(missing)}")
    hcm: dict[str, Any] = {
        "@type": _HCM_TYPE,
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "http_filters": [
            {"name": FAULT_FILTER, "typed_config": {"@type": _FAULT_TYPE}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}},
        ],
    }
    if route_config is not None:
        hcm["route_config"] = dict(route_config)
    else:
        hcm["rds"] = dict(rds or {})
    return {
        # Filesystem RDS, like any xDS source, needs a node identity.
        "node": {"id": "robomesh-local", "cluster": "robomesh-local"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "robomesh",
                "address": {"socket_address": {"address": listen_address, "port_value": listen_port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}],
            }],
            "clusters": [dict(c) for c in cluster_list],
        },
    }


def to_yaml(document: Mapping[str, Any]) -> str:
    import yaml  # the lab extra: imported when used, so that `robotclient --help` needs none

    return yaml.safe_dump(dict(document), sort_keys=False)


def haproxy_config(listen_port: int, weighted: Mapping[str, tuple[Endpoint, int]]) -> str:
    """The bare-metal alternative (the original seed's balancer): HTTP/2 both ways, weighted round robin.

    Deterministic where Envoy is random: 90/10 is exactly 9 of every 10 calls. No header routes, retries
    or faults: those need Envoy.
    """
    servers = "\n".join(f"    server {name} {ep.host}:{ep.port} proto h2 weight {weight}"
                        for name, (ep, weight) in weighted.items())
    return (
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n"
        f"frontend grpc\n    bind 127.0.0.1:{listen_port} proto h2\n    default_backend subsets\n"
        f"backend subsets\n    balance roundrobin\n{servers}\n"
    )
