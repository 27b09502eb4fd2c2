# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the observability tests: the relay tests' PKI and reference
receiver (tests/relay/relaylib.py), a fresh token per test."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "relay"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "witness"))

import lvtest  # noqa: E402
from relaylib import PKI, Receiver, public_key_hex, relay_env  # noqa: E402


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
