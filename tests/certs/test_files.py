"""certs.files: secrets land 0600 whatever existed before."""

from __future__ import annotations

from pathlib import Path

from psvn.certs.files import write_private
from tests.certs.conftest import mode


def test_write_private_creates_parents_and_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "secret.key"
    write_private(path, b"one")
    assert path.read_bytes() == b"one" and mode(path) == 0o600
    path.chmod(0o644)
    write_private(path, b"two")  # replacing also lands 0600
    assert path.read_bytes() == b"two" and mode(path) == 0o600
