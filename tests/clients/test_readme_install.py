"""The SDK README's install block, run as written in a fresh virtualenv: what an integrator
types first must work (the package builds from the checkout and imports by its documented name)."""

from __future__ import annotations

import os
import re
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "clients" / "python" / "README.md"


def install_block() -> list[str]:
    section = README.read_text().split("## Install", 1)[1]
    block = re.search(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)
    assert block, "no sh block under '## Install'"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


@pytest.mark.timeout(300)
def test_the_install_block_installs_an_importable_sdk(tmp_path: Path) -> None:
    commands = install_block()
    assert commands == ["pip install ./clients/python"]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(env_dir),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    for command in commands:  # as a reader types them, from the checkout's root
        done = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{command!r} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    probe = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                            "import psvn_client, sys; print(psvn_client.__file__); print(psvn_client.Client.__name__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    where, name = probe.stdout.split()
    assert name == "Client" and where.startswith(str(env_dir))  # the installed copy, not the checkout's
