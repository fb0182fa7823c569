"""The serving image (deploy/Dockerfile), its health probe and docker-compose.yml."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution

import grpc
import pytest
import tomllib
import yaml
from grpc_health.v1 import health, health_pb2_grpc
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import DEPLOY, REPO

DOCKERFILE = DEPLOY / "Dockerfile"
TORCH_LIKE = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*)$")


def instructions(path=DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def base_dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def dependency_closure(requirements: list[str]) -> dict[str, str]:
    """name -> version of everything ``requirements`` pull in, read from installed metadata."""
    found: dict[str, str] = {}
    stack = list(requirements)
    while stack:
        req = Requirement(stack.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's or another platform's dependency
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} (required via the base install) is not installed in this venv")
        found[name] = dist.version
        stack.extend(dist.requires or [])
    return found


# ------------------------------------------------------------------------------------ the image
def test_image_installs_only_the_base_dependencies_and_they_pull_no_torch():
    pip_installs = [args for op, args in instructions() if op == "RUN" and "pip install" in args]
    assert pip_installs, "the Dockerfile installs nothing with pip"
    for args in pip_installs:
        for command in args.split("&&"):
            if "pip install" not in command:
                continue
            targets = [t for t in command.split("pip install", 1)[1].split() if not t.startswith("-")]
            assert targets == ["."], f"image must install only the project's base install: {command!r}"
    closure = dependency_closure(base_dependencies())
    assert {"onnxruntime", "grpcio", "numpy", "prometheus-client", "tokenizers"} <= set(closure)
    assert not [n for n in closure if TORCH_LIKE.match(n)], sorted(closure)
    # Training-only packages (tqdm is not among them: huggingface-hub, via tokenizers, needs it).
    assert not {"onnx", "onnxscript", "matplotlib", "sacrebleu"} & set(closure)


def test_dockerfile_shape():
    ops = instructions()
    froms = [args for op, args in ops if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    args = dict(a.split("=", 1) for op, a in ops if op == "ARG" and "=" in a)
    assert args.get("PYTHON_IMAGE") == "python:3.11-slim"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    runtime = ops[max(i for i, (op, _) in enumerate(ops) if op == "FROM"):]
    env = " ".join(a for op, a in runtime if op == "ENV")
    for pair in ("SEQSERVE_MODELS=/models", "SEQSERVE_HOST=0.0.0.0", "SEQSERVE_PORT=50051",
                 "SEQSERVE_METRICS_PORT=9464", "SEQSERVE_METRICS_HOST=0.0.0.0"):
        assert pair in env, pair
    users = [a for op, a in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1].split(":")[0].isdigit(), "numeric uid so runAsNonRoot can verify it"
    assert ("EXPOSE", "50051 9464") in runtime
    health_cmd = [a for op, a in runtime if op == "HEALTHCHECK"]
    assert health_cmd and "seqserve-healthcheck" in health_cmd[0]
    assert runtime[-1] == ("CMD", '["seqserve", "serve"]')
    copies = [a.split() for op, a in runtime if op == "COPY"]
    assert ["models/", "/models/"] in copies


def test_copied_paths_exist_and_are_not_dockerignored():
    ignored = {ln.strip().rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for required in (".venv", "tests", "runs", ".git"):
        assert required in ignored, required
    for op, args in instructions():
        if op != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (REPO / source).exists(), f"COPY source {source} is missing from the repository"
            assert source.rstrip("/") not in ignored, f"COPY source {source} is excluded by .dockerignore"


# --------------------------------------------------------------------------------- health probe
async def run_probe(*args: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(DEPLOY / "healthcheck.py"), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 60)


async def test_healthcheck_script_follows_the_grpc_health_service():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        assert await run_probe("--address", address) == 0
        assert await run_probe("--address", address, "--service", "no.such.Service") == 1
        await servicer.enter_graceful_shutdown()  # what the server does when it drains
        assert await run_probe("--address", address) == 1
    finally:
        await server.stop(None)
    assert await run_probe("--address", address, "--timeout", "0.5") == 1  # nobody listening


# ------------------------------------------------------------------------------- docker-compose
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_docker_compose_config_is_valid(compose_bin):
    result = subprocess.run([compose_bin, "-f", "docker-compose.yml", "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    services = subprocess.run([compose_bin, "-f", "docker-compose.yml", "config", "--services"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert set(services.stdout.split()) == {"seqserve", "envoy", "prometheus", "grafana"}


def test_compose_scales_seqserve_behind_envoy():
    services = compose()["services"]
    seqserve = services["seqserve"]
    assert seqserve["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert "ports" not in seqserve, "fixed host ports would break --scale seqserve=N"
    assert "container_name" not in seqserve
    assert "50051:50051" in services["envoy"]["ports"]
    grace = int(seqserve["environment"]["SEQSERVE_GRACE_S"])
    assert int(seqserve["stop_grace_period"].rstrip("s")) > grace
    envoy = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    (cluster,) = envoy["static_resources"]["clusters"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "seqserve", "port_value": 50051}
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "seqserve")
    assert job["dns_sd_configs"][0]["names"] == ["seqserve"]
    assert job["dns_sd_configs"][0]["port"] == int(seqserve["environment"]["SEQSERVE_METRICS_PORT"])


def test_compose_mounts_exist_and_images_are_pinned():
    services = compose()["services"]
    for name, svc in services.items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name} image {image!r} is not pinned"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana_env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = grafana_env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mount = next(v for v in services["grafana"]["volumes"] if v.startswith("./deploy/grafana/dashboards:"))
    host_dir, container_dir = mount.split(":")[:2]
    assert home.startswith(container_dir + "/") and (REPO / host_dir / home[len(container_dir) + 1:]).is_file()
