"""No secrets in images or manifests; registry credentials only as a Kubernetes Secret made from the command line.

Scanned: every file under docker/, kube/ (subfolders too) and istio/, and every file of the Docker
build context that survives .dockerignore; .dockerignore must keep key material out of the context
even inside the folders it allows. Each detector is also shown to fire on a planted example, so
that a scan finding nothing means something.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import REPO, load_file, walk
from tests.deploy.test_docker import dockerignore_rules, excluded, parse_dockerfile

SCANNED = ("docker", "kube", "istio")
PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# Names that say "this holds a credential" (env variables, Dockerfile ENV/ARG, manifest keys).
SECRET_NAME = re.compile(r"(?i)(pass(word|wd)?|secret|token|api[-_]?key|credential|private[-_]?key|auth)")
# Values that look like a credential whatever their name: well-known token shapes and long random strings.
TOKEN_VALUE = re.compile(
    r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JWT
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub token
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack token
    r"|(?i:(?:password|passwd|token|secret)\s*[=:]\s*\S+)"
    r"|^[A-Za-z0-9+/_-]{40,}={0,2}$"  # one long base64/hex blob
)
# Files that are key material by their name.
KEY_FILES = ("services/server.pem", "services/common/tls.key", "docker/certs/ca.crt", "robotclient/robot.p12",
             "docker/.env", ".env", "robotclient/.env.local", "protos/id_rsa", "docker/id_ed25519.pub",
             "docker/.docker/config.json", "services/.netrc", "docker/registry.dockerconfigjson")


def files_under(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*") if p.is_file())


def build_context() -> list[Path]:
    """Files `docker build .` sends from this checkout: the repo filtered by .dockerignore."""
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    kept = []
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO)
        # Every re-inclusion (`!...`) in .dockerignore is a top-level entry, so an excluded top-level
        # folder (.git, .venv, tests, ...) holds nothing that is sent.
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if not excluded(d, rules)]
        kept += [Path(root) / f for f in files if not excluded(str(rel_root / f), rules)]
    return kept


def documents(folder: str) -> Iterator[tuple[Path, Any]]:
    for path in files_under(folder):
        if path.suffix in (".yaml", ".yml", ".json"):
            for manifest in load_file(path):
                yield path, manifest.doc




def env_entries(doc: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `env:` entry of every container anywhere in a manifest."""
    for where, key, value in walk(doc):
        if key == "env" and isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict) and "name" in entry:
                    yield f"{where}[{entry['name']}]", entry


def env_problems(doc: Any) -> list[str]:
    problems = []
    for where, entry in env_entries(doc):
        value = entry.get("value")
        if value is None:
            continue  # valueFrom: a secretKeyRef or the Downward API, which is how it should be done
        if SECRET_NAME.search(str(entry["name"])):
            problems.append(f"{where}: credential-like variable with a literal value")
        elif TOKEN_VALUE.search(str(value)):
            problems.append(f"{where}: value looks like a credential")
    return problems


def secret_problems(doc: Any) -> list[str]:
    if not isinstance(doc, dict) or doc.get("kind") != "Secret":
        return []
    name = (doc.get("metadata") or {}).get("name", "?")
    if doc.get("data") or doc.get("stringData"):
        return [f"Secret/{name} carries data: create it with kubectl, never commit it"]
    return []


def dockerfile_problems(path: Path) -> list[str]:
    problems = []
    parsed = parse_dockerfile(path)
    for stage in parsed.stages:
        for key, value in stage.env().items():
            if SECRET_NAME.search(key) or TOKEN_VALUE.search(value):
                problems.append(f"{path.name}: ENV {key} looks like a credential (it stays in the image)")
        for ins in stage.all("ARG"):
            key = ins.rest.split("=", 1)[0].strip()
            if SECRET_NAME.search(key):
                problems.append(f"{path.name}:{ins.line}: ARG {key}: build args stay in the image history; "
                                "use RUN --mount=type=secret")
        for ins in stage.all("RUN"):
            if re.search(r"(?i)(docker login\b.*\s(-p|--password)\b|--password[= ]\S)", ins.rest):
                problems.append(f"{path.name}:{ins.line}: a password on a RUN line")
    for key in parsed.global_args:
        if SECRET_NAME.search(key):
            problems.append(f"{path.name}: global ARG {key} looks like a credential")
    return problems


# ---------------------------------------------------------------- the scans


@pytest.mark.parametrize("folder", SCANNED)
def test_no_private_keys_in_deploy_folders(folder: str) -> None:
    files = files_under(folder)
    assert files, f"{folder}/ is empty: nothing scanned"
    found = [str(p.relative_to(REPO)) for p in files if PRIVATE_KEY.search(p.read_text(errors="replace"))]
    assert not found, f"private keys in {found}"


def test_no_private_keys_in_the_build_context() -> None:
    context = build_context()
    rels = {str(p.relative_to(REPO)) for p in context}
    assert "pyproject.toml" in rels and "docker/healthcheck.py" in rels, "the context walk lost the sources"
    assert not any(r.startswith((".git/", ".venv/", "tests/")) for r in rels)
    found = [str(p.relative_to(REPO)) for p in context if PRIVATE_KEY.search(p.read_text(errors="replace"))]
    assert not found, f"private keys would be sent to docker build: {found}"


def test_dockerignore_keeps_key_material_out_of_the_context() -> None:
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    assert not excluded("services/common/tls.py", rules), "the TLS code itself must stay in"
    sent = [path for path in KEY_FILES if not excluded(path, rules)]
    assert not sent, f".dockerignore lets key material into the build context: {sent}"


@pytest.mark.parametrize("folder", ["kube", "istio"])
def test_no_secret_objects_or_credential_literals_in_manifests(folder: str) -> None:
    problems = []
    count = 0
    for path, doc in documents(folder):
        count += 1
        where = path.relative_to(REPO)
        problems += [f"{where}: {p}" for p in secret_problems(doc) + env_problems(doc)]
        for at, key, value in walk(doc):
            if isinstance(key, str) and SECRET_NAME.search(key) and isinstance(value, str):
                problems.append(f"{where}{at}: literal value for a credential-like key")
        text = path.read_text()
        if ".dockerconfigjson" in text or re.search(r"(?i)--docker-password[= ]\S", text):
            problems.append(f"{where}: registry credentials")
    assert count, f"no manifests found under {folder}/"
    assert not problems, "\n".join(problems)


def test_dockerfiles_carry_no_credentials() -> None:
    dockerfiles = sorted((REPO / "docker").glob("*.Dockerfile"))
    assert dockerfiles
    problems = [p for path in dockerfiles for p in dockerfile_problems(path)]
    assert not problems, "\n".join(problems)


def test_docs_show_the_registry_pull_secret_pattern() -> None:
    for name in ("images.md", "security.md"):
        text = (REPO / "docs" / name).read_text()
        assert re.search(r"kubectl( -n \S+)? create secret docker-registry", text), f"docs/{name}: no pull secret"
        assert "imagePullSecrets" in text, f"docs/{name}: the pull secret is not used by any pod"


# ---------------------------------------------------------------- the detectors fire


def test_detectors_fire_on_planted_secrets(tmp_path: Path) -> None:
    pem = "-----BEGIN " + "EC PRIVATE KEY-----\nMHcCAQEE...\n-----END EC PRIVATE KEY-----\n"
    assert PRIVATE_KEY.search(pem) and PRIVATE_KEY.search(pem.replace("EC ", ""))
    assert not PRIVATE_KEY.search("-----BEGIN CERTIFICATE-----")
    pod = {"spec": {"containers": [{"name": "c", "env": [
        {"name": "DB_PASSWORD", "value": "hunter2"},
        {"name": "UPSTREAM", "value": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.x"},
        {"name": "REGISTRY_TOKEN", "valueFrom": {"secretKeyRef": {"name": "r", "key": "t"}}},
        {"name": "PORT", "value": "50051"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]}]}}
    problems = env_problems(pod)
    assert len(problems) == 2 and "DB_PASSWORD" in problems[0] and "UPSTREAM" in problems[1], problems
    assert secret_problems({"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}})
    assert not secret_problems({"kind": "ConfigMap", "data": {"k": "v"}})
    dockerfile = tmp_path / "x.Dockerfile"
    dockerfile.write_text("FROM python:3.11-slim\nARG REGISTRY_PASSWORD\nENV API_TOKEN=abc\n"
                          "RUN docker login -u me -p secret registry\n")
    assert len(dockerfile_problems(dockerfile)) == 3, dockerfile_problems(dockerfile)
