"""The module's behaviour on this machine, in the PAM sandbox (tests/conftest.py): failure modes,
logging, propagation under a shared /, scope=user. These need things only this machine gives
(capsh over the caller, the syslog socket, nested mount namespaces); the host-agnostic isolation
claims live in tests/isolation and run against every test host."""

from __future__ import annotations

import pytest
import testinfra
from testinfra.host import Host


@pytest.fixture(scope="module")
def host() -> Host:
    """This machine, whatever --hosts says: it replaces testinfra's parametrized fixture here."""
    return testinfra.get_host("local://")
