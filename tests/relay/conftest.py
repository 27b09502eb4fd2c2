# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the relay tests: one throwaway PKI per session, a fresh token
and spool per test, and receivers started on demand."""
import os

import pytest

from relayfixtures import pki, vault  # noqa: F401
from relaylib import Receiver, relay_env


@pytest.fixture
def bare_env(tmp_path):
    """An environment for refusals that happen before the token is opened:
    no token is made, the spool path must stay untouched."""
    env = dict(os.environ)
    env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = str(tmp_path / "spool.sqlite3")
    env["ATTESTO_LOCAL_VAULT_INSTALLATION_ID"] = "inst-test"
    env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"] = "/nonexistent/module.so"
    return env


@pytest.fixture
def start_receiver(tmp_path, pki):
    """start_receiver(vault=None, **kw) starts a receiver that knows the
    vault's key, and points the vault at it over HTTPS with the test CA."""
    started = []

    def start(vault=None, inst="inst-test", **kw):
        reg = kw.pop("register", None)
        if reg is None:
            reg = [(inst, vault.pk)] if vault is not None else []
        r = Receiver(tmp_path / f"receiver{len(started)}", pki, register=reg, **kw)
        started.append(r)
        if vault is not None:
            relay_env(vault, r, pki, inst)
        return r

    yield start
    for r in started:
        r.stop()
