"""Loading Kubernetes manifests the way ``kubectl apply -f FOLDER`` reads them, for the deploy tests.

``load_folder`` reads the ``.yaml``/``.yml``/``.json`` files directly in a folder (not its subfolders:
kubectl only recurses with ``-R``) in kubectl's order (lexical by file name), every YAML document of each.
``index`` keys objects by ``(kind, name)``; ``pod_templates`` gives the pod template of every workload.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
# The extensions kubectl reads from a folder (k8s.io/cli-runtime FileExtensions).
KUBECTL_EXTENSIONS = (".json", ".yaml", ".yml")
WORKLOAD_KINDS = frozenset({"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob", "Pod"})


@dataclass(frozen=True)
class Manifest:
    """One YAML document: the file it came from, its position there, the parsed object."""

    path: Path
    position: int
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        return (self.doc.get("metadata") or {}).get("name", "")

    @property
    def namespace(self) -> str | None:
        return (self.doc.get("metadata") or {}).get("namespace")

    def __str__(self) -> str:
        try:
            where = self.path.relative_to(REPO)
        except ValueError:
            where = self.path
        return f"{where}#{self.position} {self.kind}/{self.name}"


def kubectl_files(folder: Path) -> list[Path]:
    """The files ``kubectl apply -f folder`` reads, in its order (no recursion)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in KUBECTL_EXTENSIONS)


def load_file(path: Path) -> list[Manifest]:
    """Every non-empty document of one file (JSON is YAML, so one parser serves both)."""
    with open(path, encoding="utf-8") as f:
        docs = list(yaml.safe_load_all(f))
    return [Manifest(Path(path), i, doc) for i, doc in enumerate(docs) if doc is not None]


def load_folder(folder: Path | str) -> list[Manifest]:
    """The documents of the files directly in ``folder``, in kubectl's order."""
    return [m for path in kubectl_files(Path(folder)) for m in load_file(path)]


def index(manifests: Iterable[Manifest]) -> dict[tuple[str, str], Manifest]:
    """``(kind, name) -> Manifest``; a duplicate key is an error (one would silently replace the other)."""
    out: dict[tuple[str, str], Manifest] = {}
    for m in manifests:
        key = (m.kind, m.name)
        if key in out:
            raise ValueError(f"duplicate {m.kind}/{m.name}: {out[key]} and {m}")
        out[key] = m
    return out


def pod_template(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template (``{"metadata": ..., "spec": ...}``) of a workload object, else None."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return {"metadata": doc.get("metadata") or {}, "spec": spec}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        return spec.get("template")
    if kind in WORKLOAD_KINDS:
        return spec.get("template")
    return None


def pod_templates(manifests: Iterable[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    """``(workload, pod template)`` for every workload object."""
    out = []
    for m in manifests:
        template = pod_template(m.doc)
        if template is not None:
            out.append((m, template))
    return out


def containers(pod_spec: dict[str, Any], init: bool = True) -> Iterator[dict[str, Any]]:
    """The containers of a pod spec, init containers first when asked."""
    if init:
        yield from pod_spec.get("initContainers") or []
    yield from pod_spec.get("containers") or []


def template_labels(template: dict[str, Any]) -> dict[str, str]:
    return dict((template.get("metadata") or {}).get("labels") or {})


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """A Service-style equality selector (non-empty) matches these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted path, key, value) of every mapping entry in a parsed document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")
