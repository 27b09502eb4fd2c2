# SPDX-License-Identifier: Apache-2.0
"""pytest fixtures shared by the suites that run the vault against the
reference receiver (doctor, rotation, observability): one throwaway PKI per
session, a fresh token per test, and a receiver that knows the vault's key.
A conftest imports the names it needs."""
import pytest

import lvtest
from relaylib import PKI, Receiver, public_key_hex, relay_env


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def vault(tmp_path):
    v = lvtest.Vault(tmp_path / "vault")
    v.pk = public_key_hex(v)
    return v


@pytest.fixture
def receiver(tmp_path, pki, vault):
    """The reference receiver knowing the vault's key; the vault points at it."""
    r = Receiver(tmp_path / "receiver", pki, register=[("inst-test", vault.pk)])
    relay_env(vault, r, pki)
    yield r
    r.stop()
