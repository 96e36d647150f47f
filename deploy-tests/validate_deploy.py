#!/usr/bin/env python3
"""Validate the Kubernetes objects that EnvProxy ships, and the Dockerfile's file references.

- Every YAML file under manifests/ is validated, and so is every object the Helm chart renders
  with its default values and with deploy-tests/custom-values.yaml. The schemas are those of
  the three newest minor Kubernetes releases that ``kubernetes-validate`` ships, in strict mode,
  where unknown fields are errors.
- The chart is rendered and linted by Helm's own engine through ``helm-python-sdk`` (Helm's Go
  library behind a C ABI), offline.
- cert-manager objects have no schema in ``kubernetes-validate``; they are checked for the
  fields that cert-manager requires (see ``check_cert_manager``).
- Each agent config that the manifests and the rendered charts contain is written to
  ``--config-dir`` as ``<name>.toml``, so that the agent's own parser can load it.
- The Dockerfile's COPY sources are checked against the repository, the artifacts of the
  packages each stage builds (from ``cargo metadata``) and build script outputs, and each
  runtime hook under hooks/ must be copied into the image.

Exit status 0 when everything passes; otherwise each failure is printed and the status is 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

try:
    import helm_python as helm
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
except ImportError as error:  # pragma: no cover - reported to the caller
    sys.exit(
        f"missing Python package ({error.name}): install it with "
        "`pip install kubernetes-validate helm-python-sdk` (.ci/run does)"
    )

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "chart" / "envproxy"
CUSTOM_VALUES = ROOT / "deploy-tests" / "custom-values.yaml"
RELEASE = "envproxy"
NAMESPACE = "envproxy-system"

CERT_MANAGER_KINDS = {"Issuer", "ClusterIssuer", "Certificate"}


def newest_minor_versions(count: int = 3) -> list[str]:
    """Return the newest ``count`` Kubernetes minor versions that kubernetes-validate ships."""
    schema_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    versions = set()
    for entry in schema_dir.iterdir():
        match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+-local-strict", entry.name)
        if match:
            versions.add((int(match.group(1)), int(match.group(2))))
    newest = sorted(versions)[-count:]
    if len(newest) < count:
        raise SystemExit(f"kubernetes-validate ships only {len(newest)} versions: {newest}")
    return [f"{major}.{minor}.0" for major, minor in newest]


class Checker:
    """Collects failures and counts checked objects."""

    def __init__(self, versions: list[str]) -> None:
        self.versions = versions
        self.failures: list[str] = []
        self.validated = 0

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"FAIL {message}")

    def validate_object(self, origin: str, obj: dict) -> None:
        """Validate one object against each Kubernetes version, or cert-manager's fields."""
        kind = obj.get("kind", "")
        name = obj.get("metadata", {}).get("name", "?")
        label = f"{origin}: {kind}/{name}"
        if obj.get("apiVersion", "").startswith("cert-manager.io/"):
            for problem in check_cert_manager(obj):
                self.fail(f"{label}: {problem}")
            self.validated += 1
            return
        for version in self.versions:
            try:
                kv_utils.validate(obj, version, strict=True)
            except kv_utils.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                self.fail(f"{label} against Kubernetes {version}: {path}: {error.message}")
            except kv_utils.SchemaNotFoundError:
                self.fail(f"{label}: no schema for {obj.get('apiVersion')} {kind} in {version}")
        self.validated += 1


def check_cert_manager(obj: dict) -> list[str]:
    """Check the fields that cert-manager v1 requires of Issuers and Certificates.

    kubernetes-validate has no schema for cert-manager's custom resources, so this covers the
    required fields of cert-manager.io/v1 as its API reference lists them.
    """
    problems = []
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if obj.get("apiVersion") != "cert-manager.io/v1":
        problems.append(f"apiVersion {obj.get('apiVersion')!r} is not cert-manager.io/v1")
    if kind not in CERT_MANAGER_KINDS:
        problems.append(f"unexpected cert-manager kind {kind!r}")
    if kind in ("Issuer", "ClusterIssuer"):
        issuers = [key for key in ("selfSigned", "ca", "acme", "vault", "venafi") if key in spec]
        if len(issuers) != 1:
            problems.append(f"needs exactly one issuer type, found {issuers}")
        if "ca" in spec and not spec["ca"].get("secretName"):
            problems.append("spec.ca.secretName is missing")
    if kind == "Certificate":
        if not spec.get("secretName"):
            problems.append("spec.secretName is missing")
        issuer = spec.get("issuerRef") or {}
        if not issuer.get("name"):
            problems.append("spec.issuerRef.name is missing")
        if not (spec.get("dnsNames") or spec.get("commonName")):
            problems.append("needs spec.dnsNames or spec.commonName")
    return problems


def load_documents(text: str) -> list[dict]:
    return [document for document in yaml.safe_load_all(text) if document]


def agent_configs(objects: list[dict]) -> dict[str, str]:
    """Return the config.toml of each ConfigMap, by ConfigMap name."""
    configs = {}
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and "config.toml" in obj.get("data", {}):
            configs[obj["metadata"]["name"]] = obj["data"]["config.toml"]
    return configs


def check_manifests(checker: Checker) -> list[dict]:
    objects = []
    files = sorted(MANIFESTS.rglob("*.yaml"))
    if not files:
        checker.fail(f"no YAML files under {MANIFESTS}")
    for path in files:
        documents = load_documents(path.read_text())
        if not documents:
            checker.fail(f"{path.relative_to(ROOT)} has no objects")
        for obj in documents:
            checker.validate_object(str(path.relative_to(ROOT)), obj)
            objects.append(obj)
    return objects


def check_self_signed_script(checker: Checker) -> None:
    """Run the certificate script of the no-cert-manager path and check what it writes."""
    script = MANIFESTS / "optional" / "self-signed-certificates.sh"
    with tempfile.TemporaryDirectory() as output:
        secret_path = Path(output) / "webhook-tls-secret.yaml"
        # A Secret file left world-readable by an earlier run must not stay so.
        secret_path.write_text("")
        secret_path.chmod(0o644)
        result = subprocess.run(
            ["sh", "-c", 'umask 022; exec sh "$0" "$1"', str(script), output],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            checker.fail(f"{script.name} failed: {result.stderr}")
            return
        mode = secret_path.stat().st_mode & 0o777
        if mode & 0o077:
            checker.fail(
                f"{script.name}: the Secret with the private key has mode {mode:o}; "
                "others can read it"
            )
        (secret,) = load_documents(secret_path.read_text())
        checker.validate_object(f"{script.name} output", secret)
        files = {}
        for key in ("tls.crt", "tls.key", "ca.crt"):
            files[key] = Path(output) / key
            files[key].write_bytes(base64.b64decode(secret["data"][key]))
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(files["ca.crt"]), str(files["tls.crt"])],
            capture_output=True, text=True, check=False,
        )
        if verify.returncode != 0:
            checker.fail(f"{script.name}: certificate does not verify: {verify.stdout}")
        text = subprocess.run(
            ["openssl", "x509", "-noout", "-text", "-in", str(files["tls.crt"])],
            capture_output=True, text=True, check=True,
        ).stdout
        for name in ("envproxy-webhook.envproxy-system.svc",):
            if f"DNS:{name}" not in text:
                checker.fail(f"{script.name}: certificate lacks DNS name {name}")
        patch = yaml.safe_load((Path(output) / "ca-bundle-patch.json").read_text())
        webhooks = load_documents((MANIFESTS / "webhook-configuration.yaml").read_text())[0]
        if len(patch) != len(webhooks["webhooks"]):
            checker.fail(
                f"{script.name}: the patch sets {len(patch)} caBundles for "
                f"{len(webhooks['webhooks'])} webhooks"
            )
        if any(op["value"] != secret["data"]["ca.crt"] for op in patch):
            checker.fail(f"{script.name}: the patch's caBundle is not the Secret's ca.crt")


def render_chart(checker: Checker, origin: str, values: dict | None) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    try:
        chart.validate_schema(values)
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as error:
        checker.fail(f"{origin}: rendering failed: {error}")
        return []
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    for message in report.get("messages", []):
        # Severity 1 is information, such as the recommended icon.
        if message.get("severity", 0) >= 2:
            checker.fail(f"{origin}: helm lint: {message.get('path')}: {message.get('error')}")
    for error in report.get("errors") or []:
        checker.fail(f"{origin}: helm lint: {error}")
    objects = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            if not text.strip():
                checker.fail(f"{origin}: NOTES.txt renders empty")
            continue
        for obj in load_documents(text):
            checker.validate_object(f"{origin} {template}", obj)
            objects.append(obj)
    return objects


def check_chart_failures(checker: Checker) -> None:
    """Check that contradicting values fail at render time with a message naming them."""
    cases = [
        ({"webhook": {"certificates": {"source": "secret"}}}, "webhook.certificates.secretName"),
        ({"webhook": {"replicas": 2, "minAvailable": 2}}, "webhook.minAvailable"),
        ({"webhook": {"replicas": 2, "minAvailable": "100%"}}, "webhook.minAvailable"),
        # 60 % of 2 replicas rounds up to 2, which blocks drains like the integer 2.
        ({"webhook": {"replicas": 2, "minAvailable": "60%"}}, "webhook.minAvailable"),
        ({"metrics": {"port": 9465}, "agent": {"healthPort": 9465}}, "metrics.port"),
        ({"metrics": {"port": 9465}, "agent": {"healthPort": 9465}}, "agent.healthPort"),
        ({"node": {"socketDir": "/run/x", "libraryDir": "/run/x"}}, "node.socketDir"),
        ({"node": {"socketDir": "/run/x/", "libraryDir": "/run/x"}}, "node.socketDir"),
        ({"node": {"socketDir": "/opt/envproxy/run"}}, "node.socketDir"),
        ({"node": {"socketDir": "/opt/envproxy/run"}}, "node.libraryDir"),
        ({"node": {"libraryDir": "/run/envproxy/lib"}}, "node.libraryDir"),
        ({"node": {"adminSocketDir": "/run/envproxy/admin"}}, "node.adminSocketDir"),
        ({"node": {"adminSocketDir": "/run/envproxy"}}, "node.adminSocketDir"),
        ({"node": {"adminSocketDir": "/opt/envproxy/admin"}}, "node.adminSocketDir"),
    ]
    chart = helm.Chart.load(str(CHART))
    for values, expected in cases:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as error:
            if expected not in str(error):
                checker.fail(f"values {values}: error does not name {expected}: {error}")
            continue
        checker.fail(f"values {values} rendered, expected an error naming {expected}")
    for values in [
        {"webhook": {"replicas": 3, "minAvailable": "50%"}},
        {"webhook": {"replicas": 2, "minAvailable": "0%"}},
        {"metrics": {"enabled": False, "port": 9465}},
        {"node": {"socketDir": "/run/envproxy", "libraryDir": "/run/envproxy-lib"}},
    ]:
        try:
            chart.validate_schema(values)
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as error:
            checker.fail(f"values {values} failed, expected them to render: {error}")
    for values, expected in [
        ({"webhook": {"failurePolicy": "Sometimes"}}, "failurePolicy"),
        ({"tokens": {"expirationSeconds": 60}}, "expirationSeconds"),
        ({"agent": {"unknownKey": 1}}, "unknownKey"),
        ({"webhook": {"minAvailable": "abc"}}, "minAvailable"),
        ({"webhook": {"minAvailable": "101%"}}, "minAvailable"),
        ({"webhook": {"minAvailable": -1}}, "minAvailable"),
    ]:
        try:
            chart.validate_schema(values)
        except helm.HelmError as error:
            if expected not in str(error):
                checker.fail(f"values {values}: schema error does not name {expected}: {error}")
            continue
        checker.fail(f"values {values} passed values.schema.json")


def check_chart_matches_manifests(checker: Checker, manifests: list[dict], chart: list[dict]):
    """Check that the chart renders every object of manifests/, by kind and name."""
    def kinds_and_names(objects, skip_optional):
        found = set()
        for obj in objects:
            name = obj["metadata"]["name"]
            labels = obj["metadata"].get("labels", {})
            if skip_optional and (
                "token-request" in name or obj["kind"] == "Namespace"
                or labels.get("app.kubernetes.io/part-of") != "envproxy"
            ):
                continue
            found.add((obj["kind"], name))
        return found

    from_manifests = kinds_and_names(manifests, skip_optional=True)
    from_chart = kinds_and_names(chart, skip_optional=True)
    # The manifests use cert-manager, so the caller passes the chart's cert-manager rendering
    # too: its default, without the cert-manager API, generates a Secret instead.
    missing = from_manifests - from_chart
    if missing:
        checker.fail(f"the chart does not render these objects of manifests/: {sorted(missing)}")


def check_webhook_probes(checker: Checker, origin: str, objects: list[dict]) -> None:
    """Check that the webhook's probes send GET /healthz over HTTPS to its named port, a path
    that node-agent/src/webhook/server.rs serves."""
    server = (ROOT / "node-agent" / "src" / "webhook" / "server.rs").read_text()
    if 'path == "/healthz"' not in server:
        checker.fail("node-agent/src/webhook/server.rs no longer serves /healthz")
    deployments = [
        obj for obj in objects
        if obj.get("kind") == "Deployment"
        and obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "envproxy-webhook"
    ]
    if len(deployments) != 1:
        checker.fail(f"{origin}: expected one webhook Deployment, found {len(deployments)}")
        return
    for container in deployments[0]["spec"]["template"]["spec"]["containers"]:
        for probe_name in ("readinessProbe", "livenessProbe"):
            probe = container.get(probe_name) or {}
            expected = {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
            if probe.get("httpGet") != expected:
                checker.fail(
                    f"{origin}: webhook container {container['name']}: {probe_name} is "
                    f"{probe}, expected httpGet {expected}"
                )


def check_webhook_network_policy(
    checker: Checker, origin: str, objects: list[dict], sources: list[dict] | None
) -> None:
    """Check that one NetworkPolicy selects the webhook pods and admits ingress to their HTTPS
    port only, from ``sources`` (None: from any source)."""
    policies = [
        obj for obj in objects
        if obj.get("kind") == "NetworkPolicy"
        and obj["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        == "envproxy-webhook"
    ]
    if len(policies) != 1:
        checker.fail(f"{origin}: expected one webhook NetworkPolicy, found {len(policies)}")
        return
    spec = policies[0]["spec"]
    if spec.get("policyTypes") != ["Ingress"]:
        checker.fail(f"{origin}: webhook NetworkPolicy policyTypes is {spec.get('policyTypes')}")
    expected_rule = {"ports": [{"port": "https", "protocol": "TCP"}]}
    if sources is not None:
        expected_rule["from"] = sources
    if spec.get("ingress") != [expected_rule]:
        checker.fail(
            f"{origin}: webhook NetworkPolicy ingress is {spec.get('ingress')}, "
            f"expected [{expected_rule}]"
        )


def check_admin_socket(checker: Checker, origin: str, objects: list[dict]) -> None:
    """Check that the agent's admin socket lies on a hostPath of its own that the agent's
    container mounts at the same path, outside the directories that mutated pods mount."""
    if tomllib is None:
        checker.fail(f"{origin}: the admin socket check needs Python 3.11 or later (tomllib)")
        return
    configs = list(agent_configs(objects).values())
    daemonsets = [obj for obj in objects if obj.get("kind") == "DaemonSet"]
    if len(configs) != 1 or len(daemonsets) != 1:
        checker.fail(f"{origin}: expected one agent config and one DaemonSet")
        return
    config = tomllib.loads(configs[0])
    socket = config.get("admin", {}).get("socket")
    if not socket:
        checker.fail(f"{origin}: [admin] socket is not set, so it defaults to inside "
                     "the socket directory that every mutated pod mounts")
        return
    admin_dir = PurePosixPath(socket).parent
    shared_dirs = [
        PurePosixPath(config["agent"]["socket"]).parent,
        PurePosixPath(config["webhook"]["library_dir"]),
    ]
    for shared in shared_dirs:
        if admin_dir == shared or shared in admin_dir.parents:
            checker.fail(f"{origin}: admin socket {socket} is inside {shared}, which pods mount")
    pod = daemonsets[0]["spec"]["template"]["spec"]
    host_paths = {
        volume["name"]: volume["hostPath"]["path"]
        for volume in pod.get("volumes", []) if "hostPath" in volume
    }
    mounts = [
        mount for container in pod["containers"] for mount in container.get("volumeMounts", [])
        if PurePosixPath(mount["mountPath"]) == admin_dir
    ]
    if len(mounts) != 1:
        checker.fail(f"{origin}: the agent's container does not mount {admin_dir}")
        return
    host_path = host_paths.get(mounts[0]["name"])
    if host_path is None or PurePosixPath(host_path) != admin_dir:
        checker.fail(
            f"{origin}: {admin_dir} is mounted from {host_path!r}, expected the hostPath "
            f"{admin_dir}, so that root on the node reaches the same socket"
        )


# Files that a package's build script writes into the source tree, relative to the repository,
# with the package and what its stage needs for the script to write them.
BUILD_SCRIPT_OUTPUTS = {
    "hooks/java/envproxy-javaagent.jar": {
        "package": "envproxy-java-hook",
        "build_script": "hooks/java/build.rs",
        # hooks/java/build.rs only warns without javac and jar.
        "stage_needs": (r"apt-get install\b[^&;]*\bopenjdk-\d+-jdk(-headless)?\b", "JDK"),
        "checked_by": r"test -f hooks/java/envproxy-javaagent\.jar",
    },
}
IMAGE_HOOKS_DIR = "/usr/lib/envproxy/hooks"
# Directories under hooks/ that programs build in rather than load at run time.
BUILT_IN_HOOKS = {"go"}


def cargo_artifacts() -> dict[str, set[str]]:
    """Return the file names that building each workspace package produces in target/release,
    from `cargo metadata` (binaries, and cdylibs as lib<name>.so)."""
    cargo = os.environ.get("CARGO", "cargo")
    metadata = subprocess.run(
        [cargo, "metadata", "--no-deps", "--format-version", "1", "--offline",
         "--manifest-path", str(ROOT / "Cargo.toml")],
        capture_output=True, text=True, check=True,
    )
    artifacts = {}
    for package in json.loads(metadata.stdout)["packages"]:
        names = set()
        for target in package["targets"]:
            if "bin" in target["kind"]:
                names.add(target["name"])
            if "cdylib" in target["kind"]:
                names.add(f"lib{target['name'].replace('-', '_')}.so")
        artifacts[package["name"]] = names
    return artifacts


def dockerfile_stages(dockerfile: str) -> list[dict]:
    """Split the Dockerfile into stages: name, RUN commands and COPY instructions."""
    stages = []
    lines = re.sub(r"\\\n", " ", dockerfile).splitlines()
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            name = words[3] if len(words) >= 4 and words[2].upper() == "AS" else None
            stages.append({"name": name, "runs": [], "copies": []})
        elif instruction == "RUN" and stages:
            stages[-1]["runs"].append(" ".join(words[1:]))
        elif instruction == "COPY" and stages:
            from_stage = next(
                (word.split("=", 1)[1] for word in words[1:] if word.startswith("--from=")), None
            )
            paths = [word for word in words[1:] if not word.startswith("--")]
            stages[-1]["copies"].append(
                {"from": from_stage, "sources": paths[:-1], "destination": paths[-1]}
            )
    return stages


def built_packages(run: str, workspace: dict[str, set[str]]) -> set[str]:
    """Return the packages that the `cargo build` commands of one RUN build, including those of
    the repository's scripts that it runs."""
    commands = [run]
    for script in re.findall(r"(?<![\w/])(?:\./)?(scripts/[\w.-]+\.sh)\b", run):
        if (ROOT / script).is_file():
            commands.append(re.sub(r"\\\n", " ", (ROOT / script).read_text()))
    packages = set()
    for command in re.findall(r"cargo build\b[^&;|\n]*", "\n".join(commands)):
        named = re.findall(r"(?:-p|--package)[ =]([A-Za-z0-9_-]+)", command)
        if named:
            packages.update(named)
        else:
            # --workspace, or no package selection at the workspace root: every member.
            packages.update(workspace)
    return packages


def check_dockerfile(checker: Checker) -> None:
    """Check each COPY of the Dockerfile: context paths exist, and each path copied from a build
    stage is an artifact of a package that the stage's `cargo build` builds, or a file that such
    a package's build script writes. Check also that each runtime hook under hooks/ reaches the
    image."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = dockerfile_stages(dockerfile)
    by_name = {stage["name"]: stage for stage in stages if stage["name"]}
    workspace = cargo_artifacts()
    destinations = []
    for stage in stages:
        for copy in stage["copies"]:
            destinations.append(copy["destination"])
            for source in copy["sources"]:
                if copy["from"] is None:
                    if source != "." and not (ROOT / source).exists():
                        checker.fail(f"Dockerfile: COPY source {source} is not in the repository")
                    continue
                origin = by_name.get(copy["from"])
                if origin is None:
                    checker.fail(f"Dockerfile: COPY --from={copy['from']}: no such stage")
                    continue
                check_build_artifact(checker, copy["from"], origin, source, workspace)

    # hooks/go is a Go module that programs compile in; the nodes need nothing of it.
    runtime_hooks = (
        path for path in (ROOT / "hooks").iterdir() if path.is_dir() and path.name not in BUILT_IN_HOOKS
    )
    for hook in sorted(runtime_hooks):
        if not any(dest.startswith(f"{IMAGE_HOOKS_DIR}/{hook.name}/") for dest in destinations):
            checker.fail(
                f"Dockerfile: no COPY into {IMAGE_HOOKS_DIR}/{hook.name}/, so the agent does not "
                f"install the hook in hooks/{hook.name} on the nodes"
            )


def check_build_artifact(checker, stage_name, stage, source, workspace):
    """Check that a path copied from a build stage is something that the stage builds."""
    runs = " && ".join(stage["runs"])
    packages = built_packages(runs, workspace)
    label = f"Dockerfile: COPY --from={stage_name} {source}"
    match = re.fullmatch(
        r"/src/target/(?:(?P<triple>[a-z0-9_-]+)/)?release/(?P<name>[A-Za-z0-9_.-]+)", source
    )
    if match:
        name = match.group("name")
        if not any(name in workspace.get(package, set()) for package in packages):
            checker.fail(
                f"{label}: none of the packages that the stage builds ({sorted(packages)}) "
                f"produces {name}"
            )
        return
    relative = source[len("/src/"):] if source.startswith("/src/") else None
    output = BUILD_SCRIPT_OUTPUTS.get(relative)
    if output is None:
        if relative is None or not (ROOT / relative).exists():
            checker.fail(f"{label} is no cargo artifact, build script output or repository path")
        return
    if output["package"] not in packages:
        checker.fail(f"{label}: the stage does not build {output['package']}, which writes it")
    script = (ROOT / output["build_script"]).read_text()
    if PurePosixPath(relative).name not in script:
        checker.fail(f"{label}: {output['build_script']} no longer writes that file")
    pattern, need = output["stage_needs"]
    if not re.search(pattern, runs):
        checker.fail(f"{label}: the stage installs no {need}, without which it is not built")
    if not re.search(output["checked_by"], runs):
        checker.fail(f"{label}: the stage does not check that the build wrote it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", type=Path, help="write each agent config.toml here")
    args = parser.parse_args()

    checker = Checker(newest_minor_versions())
    print(f"Kubernetes versions: {', '.join(checker.versions)}; Helm {helm.helm_sdk_version()}")

    manifests = check_manifests(checker)
    check_self_signed_script(checker)
    defaults = render_chart(checker, "chart (default values)", None)
    custom_values = yaml.safe_load(CUSTOM_VALUES.read_text())
    custom = render_chart(checker, "chart (custom values)", custom_values)
    cert_manager = render_chart(
        checker, "chart (cert-manager)", {"webhook": {"certificates": {"source": "cert-manager"}}}
    )
    check_chart_failures(checker)
    check_chart_matches_manifests(checker, manifests, defaults + cert_manager)
    for origin, objects in [
        ("manifests", manifests), ("chart (default values)", defaults),
        ("chart (custom values)", custom),
    ]:
        check_webhook_probes(checker, origin, objects)
        check_admin_socket(checker, origin, objects)
    check_webhook_network_policy(checker, "manifests", manifests, None)
    check_webhook_network_policy(checker, "chart (default values)", defaults, None)
    check_webhook_network_policy(
        checker, "chart (custom values)", custom, custom_values["webhook"]["networkPolicy"]["from"]
    )
    without_policy = render_chart(
        checker, "chart (no NetworkPolicy)", {"webhook": {"networkPolicy": {"enabled": False}}}
    )
    if any(obj.get("kind") == "NetworkPolicy" for obj in without_policy):
        checker.fail("chart (no NetworkPolicy): webhook.networkPolicy.enabled false still renders one")
    check_dockerfile(checker)

    if args.config_dir:
        args.config_dir.mkdir(parents=True, exist_ok=True)
        for origin, objects in [
            ("manifests", manifests), ("chart-default", defaults), ("chart-custom", custom),
        ]:
            configs = agent_configs(objects)
            if len(configs) != 1:
                checker.fail(f"{origin}: expected one ConfigMap with config.toml, found {configs}")
            for text in configs.values():
                (args.config_dir / f"{origin}.toml").write_text(text)

    print(f"validated {checker.validated} objects; {len(checker.failures)} failures")
    return 1 if checker.failures else 0


if __name__ == "__main__":
    os.environ.setdefault("HELM_CACHE_HOME", tempfile.gettempdir())
    sys.exit(main())
