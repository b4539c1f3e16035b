"""Fixtures for the certs tests: one CA per test module (and a foreign one), and a gateway it issued.

Module-scoped because creating keys and certificates is the slow part, and no test changes them.
The helpers below are imported by the test modules (``from tests.certs.conftest import mode``).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from psvn.certs.ca import CA, init_ca, issue_gateway
from psvn.certs.files import GatewayFiles

ORG = "gss:E06000043"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return init_ca(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return init_ca(tmp_path_factory.mktemp("other") / "ca", common_name="someone else")


@pytest.fixture(scope="module")
def gateway(ca: CA, tmp_path_factory: pytest.TempPathFactory) -> GatewayFiles:
    return issue_gateway(ca, ORG, tmp_path_factory.mktemp("gw") / "gss_E06000043")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
