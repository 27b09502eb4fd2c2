# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the doctor tests: the relay tests' PKI and reference
receiver (tests/relay/relaylib.py), a fresh token per test."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "relay"))

import lvtest  # noqa: E402
from relaylib import Receiver, public_key_hex, relay_env  # noqa: E402
from relayfixtures import pki, receiver, vault  # noqa: E402,F401


@pytest.fixture(scope="module")
def shared(tmp_path_factory, pki):
    """One populated vault and its receiver for the tests that only change
    the configuration (each test works on a copy of shared.env)."""
    from relaylib import enqueue
    d = tmp_path_factory.mktemp("shared")
    v = lvtest.Vault(d / "vault")
    v.pk = public_key_hex(v)
    r = Receiver(d / "receiver", pki, register=[("inst-test", v.pk)])
    relay_env(v, r, pki)
    # The receiver's receipt key pinned, as it printed it: every check passes.
    keys = d / "receipt-keys.json"
    keys.write_text(json.dumps([{"alg": "Ed25519", "kid": r.receipt_kid,
                                 "public_key_hex": r.receipt_public_key.hex()}]))
    v.env["ATTESTO_LOCAL_VAULT_RECEIPT_KEYS_FILE"] = str(keys)
    enqueue(v, "str_1", "a")
    v.run(["witness-checkpoint", "--tenant-id", "ten_1", "--stream-id", "str_1",
           "--checkpoint-id", "chk_1", "--checkpoint-seq-no", "1",
           "--checkpoint-hash", "ab" * 32], check=0)
    v.receiver = r
    yield v
    r.stop()
