"""What can be checked of the packaging without Docker: the README's commands are the ones CI and the
image use, the compose file parses, the console command exists."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("python3 -m venv")]


def _dockerfile_stage_env(stage: str) -> str:
    """The instructions of the Dockerfile's stage `stage`, its comments left out."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    body = re.search(rf"^FROM \S+ AS {stage}$(.*?)(?=^FROM )", dockerfile, flags=re.M | re.S).group(1)
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("#"))


def _torch_pin(command: str) -> tuple[str, str]:
    """(version, index URL) of the command's `pip install torch==V --index-url URL`."""
    version, index = re.search(r"pip install -q torch==(\S+) --index-url (\S+) &&", command).groups()
    return version, index


def test_ci_runs_the_readme_test_command_verbatim():
    serve, test, _ = _readme_commands()
    assert "pytest" in test and "torch==2.13.0" in test
    assert test in (ROOT / ".ci/run").read_text().splitlines()
    assert serve.endswith("prefix-server serve") and "torch==2.13.0" in serve


def test_the_readme_installs_the_torch_builds_the_images_install():
    """This machine cannot reach PyTorch's index, so the README's CPU and CUDA lines are checked against
    what the images use: the same pin, the CPU image's index for serve and test, the GPU image's (and
    its settings) for the GPU line. The CPU test line itself runs in CI (above)."""
    serve, test, gpu = _readme_commands()
    pinned = re.search(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.M).group(1)
    cpu_index = re.search(r"TORCH_INDEX_URL_DEFAULT=(\S+)", _dockerfile_stage_env("cpu")).group(1)
    gpu_env = _dockerfile_stage_env("gpu")
    cuda_index = re.search(r"TORCH_INDEX_URL_DEFAULT=(\S+)", gpu_env).group(1)
    assert _torch_pin(serve) == _torch_pin(test) == (pinned, cpu_index) and cpu_index.endswith("/whl/cpu")
    assert _torch_pin(gpu) == (pinned, cuda_index) and "/whl/cu" in cuda_index
    settings = re.findall(r"PREFIX_SERVER_\w+=\w+", gpu_env)
    assert "PREFIX_SERVER_DEVICE=cuda" in settings and all(setting in gpu for setting in settings), settings
    assert gpu.endswith("prefix-server serve")


def test_the_readme_examples_leave_no_untracked_folder():
    """Every registry folder the README's examples create (`--data-dir`, the default ./data) is ignored."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    folders = {"data", *(path.removeprefix("./") for path in re.findall(r"--data-dir (\S+)", (ROOT / "README.md").read_text()))}
    assert len(folders) > 1 and all(f"/{folder}/" in ignored for folder in folders), (folders, ignored)


def test_dockerfile_installs_the_readme_torch_and_serves():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile
    assert 'CMD ["prefix-server", "serve"]' in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.M), "the image must not run as root"
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    for copied in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / copied).exists(), copied


def test_compose_file_parses_and_keeps_the_registry_on_a_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["prefix-server"]
    assert service["build"]["context"] == "."
    assert any(v.endswith(":/data") for v in service["volumes"])
    assert "registry" in compose["volumes"]
    assert "8000:8000" in service["ports"]


def test_compose_gpu_profile_reserves_a_gpu_and_does_not_clash_with_the_cpu_server():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    cpu, gpu = compose["services"]["prefix-server"], compose["services"]["prefix-server-gpu"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in cpu  # a plain `docker compose up` stays CPU only
    assert gpu["build"]["args"]["VARIANT"] == "gpu" and "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["PREFIX_SERVER_DEVICE"] == "cuda"
    assert set(gpu["ports"]).isdisjoint(cpu["ports"]) and set(gpu["volumes"]).isdisjoint(cpu["volumes"])
    assert gpu["image"] != cpu["image"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+ AS gpu$", dockerfile, flags=re.M) and "ARG VARIANT=cpu" in dockerfile
    assert "TORCH_INDEX_URL_DEFAULT=https://download.pytorch.org/whl/cpu" in dockerfile


def test_compose_says_loudly_when_it_runs_without_an_admin_token():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        script = service["command"][-1]
        assert '[ -z "$$PREFIX_SERVER_ADMIN_TOKEN" ]' in script and "runs OPEN" in script, name
        assert script.rstrip().endswith("exec prefix-server serve"), name  # exec: SIGTERM reaches the server
    shell = subprocess.run(["sh", "-c", compose["services"]["prefix-server"]["command"][-1].replace("$$", "$")
                            .replace("exec prefix-server serve", "true")], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"})
    assert "WARNING" in shell.stderr and "runs OPEN" in shell.stderr


def test_console_command_is_declared_and_runs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "prefix-server"
    assert project["scripts"]["prefix-server"] == "server.cli:main"
    out = subprocess.run([sys.executable, "-m", "server", "--help"], capture_output=True, text=True, check=True)
    assert "serve" in out.stdout


def test_every_setting_is_documented_in_the_readme():
    from server.settings import Settings

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## How it works")]
    missing = [name for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert not missing, f"settings without a row in the README's configuration table: {missing}"
