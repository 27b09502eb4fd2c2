# SPDX-License-Identifier: Apache-2.0
"""The reference receiver checks envelopes like Attesto: path, registration,
headers, canonical form, signature, event id; idempotency (same envelope,
same ack; changed envelope, 409); a seq_no per stream; signed receipts; and
its --fault spec language refuses nonsense."""
import http.client
import json
import ssl
import subprocess

import pytest

import lvtest
from relaylib import (RECEIVER_BIN, Receiver, drain_once, enqueue, event_id, public_key_hex,
                      relay_env, verify_receipt)

PROTO = "ATTESTO-LOCAL-VAULT-RELAY/1"


def post(receiver, pki, body, inst="inst-test", headers=None, method="POST", path=None):
    ctx = ssl.create_default_context(cafile=pki.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", receiver.port, context=ctx, timeout=10)
    env = json.loads(body) if body and body.startswith(b"{") else {}
    h = {"Content-Type": "application/json", "X-Attesto-Protocol": PROTO,
         "Idempotency-Key": env.get("event_id", "x") if isinstance(env, dict) else "x"}
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}
    conn.request(method, path or f"/v2/local-vault/installations/{inst}/events", body=body,
                 headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


@pytest.fixture(scope="module")
def shared(tmp_path_factory, pki):
    """One genuine envelope, accepted by a receiver, shared by the checks
    below that only post to the receiver (they never touch the token, and
    none of them changes what the receiver accepted)."""
    tmp = tmp_path_factory.mktemp("receiver-shared")
    vault = lvtest.Vault(tmp / "vault")
    vault.pk = public_key_hex(vault)
    receiver = Receiver(tmp / "receiver", pki, register=[("inst-test", vault.pk)])
    relay_env(vault, receiver, pki)
    enqueue(vault, "str_1", "e1")
    drain_once(vault, check=0)
    [entry] = receiver.events()
    yield vault, receiver, entry
    receiver.stop()


@pytest.fixture
def delivered(shared):
    vault, receiver, entry = shared
    yield receiver, entry
    assert receiver.events() == [entry]  # nothing a check did was recorded


@pytest.fixture
def own(vault, start_receiver):
    """A fresh token and receiver, for the checks that change state."""
    receiver = start_receiver(vault)
    enqueue(vault, "str_1", "e1")
    drain_once(vault, check=0)
    [entry] = receiver.events()
    return receiver, entry


def test_same_envelope_gets_the_same_ack(delivered, pki):
    receiver, entry = delivered
    status, data = post(receiver, pki, entry["body"].encode())
    assert status == 200
    assert data.decode() == entry["ack"]  # byte-identical
    assert len(receiver.events()) == 1


def test_ack_and_receipt_are_well_formed_and_signed(delivered):
    receiver, entry = delivered
    ack = json.loads(entry["ack"])
    assert ack["localVaultAck"] == {"envelopeHash": entry["envelope_hash"],
                                    "eventId": event_id("e1"), "streamId": "str_1"}
    rc = ack["receipt"]
    assert rc["event_id"] == event_id("e1") and rc["stream_id"] == "str_1"
    assert rc["seq_no"] == 1 and rc["event_hash"] == entry["envelope_hash"]
    assert rc["stream_event_id"].startswith("sev_")
    verify_receipt(rc, receiver)
    rc["seq_no"] = 2
    with pytest.raises(Exception):
        verify_receipt(rc, receiver)  # a forged receipt does not verify


def test_changed_envelope_for_known_event_is_409(vault, own, pki, tmp_path):
    receiver, entry = own
    vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = str(tmp_path / "other.sqlite3")
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = "https://127.0.0.1:9/unused"
    enqueue(vault, "str_1", "e1", payload={"changed": True})
    # take the new, validly signed body from a second receiver's log
    second = Receiver(tmp_path / "second", pki, register=[("inst-test", vault.pk)])
    try:
        vault.env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = second.events_url()
        drain_once(vault, check=0)
        [other] = second.events()
    finally:
        second.stop()
    assert other["envelope_hash"] != entry["envelope_hash"]
    status, data = post(receiver, pki, other["body"].encode())
    assert status == 409
    assert json.loads(data)["error"] == "event_conflict"
    assert len(receiver.events()) == 1


def test_tampered_envelope_is_401(delivered, pki):
    receiver, entry = delivered
    body = entry["body"].replace('"stream_id":"str_1"', '"stream_id":"str_2"')
    assert body != entry["body"]
    status, data = post(receiver, pki, body.encode())
    assert status == 401 and json.loads(data)["error"] == "signature_invalid"


def test_non_canonical_envelope_is_400(delivered, pki):
    receiver, entry = delivered
    body = entry["body"].replace(",", ", ", 1)
    status, data = post(receiver, pki, body.encode())
    assert status == 400 and json.loads(data)["error"] == "envelope_invalid"


def test_path_must_name_the_envelopes_installation(delivered, pki):
    receiver, entry = delivered
    status, data = post(receiver, pki, entry["body"].encode(), inst="inst-other")
    assert status == 400
    assert "installation_id" in json.loads(data)["detail"]


@pytest.mark.parametrize("headers,code,field", [
    ({"X-Attesto-Protocol": None}, 400, "X-Attesto-Protocol"),
    ({"X-Attesto-Protocol": "ATTESTO-LOCAL-VAULT-RELAY/2"}, 400, "X-Attesto-Protocol"),
    ({"Content-Type": "text/plain"}, 415, "Content-Type"),
    ({"Idempotency-Key": None}, 400, "Idempotency-Key"),
    ({"Idempotency-Key": "local-vault:inst-test:other"}, 400, "Idempotency-Key"),
])
def test_header_rules(delivered, pki, headers, code, field):
    receiver, entry = delivered
    status, data = post(receiver, pki, entry["body"].encode(), headers=headers)
    assert status == code
    assert field in json.loads(data)["detail"]


def test_method_size_and_path(delivered, pki):
    receiver, entry = delivered
    assert post(receiver, pki, b"", method="GET")[0] == 405
    assert post(receiver, pki, b"{" + b" " * (2 * 1024 * 1024 + 10) + b"}")[0] == 413
    assert post(receiver, pki, b"{}", path="/v1/events")[0] == 404


def test_seq_no_counts_per_stream(vault, start_receiver):
    receiver = start_receiver(vault)
    for s, r in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3"), ("b", "b2")]:
        enqueue(vault, s, r)
    drain_once(vault, check=0)
    seq = {e["event_id"]: (e["stream_id"], e["seq_no"]) for e in receiver.events()}
    assert seq[event_id("a1")] == ("a", 1) and seq[event_id("a2")] == ("a", 2)
    assert seq[event_id("a3")] == ("a", 3)
    assert seq[event_id("b1")] == ("b", 1) and seq[event_id("b2")] == ("b", 2)


def test_restart_keeps_idempotency_from_the_events_log(own, pki, vault, tmp_path):
    receiver, entry = own
    receiver.stop()
    again = Receiver(receiver.dir, pki, register=[("inst-test", vault.pk)])
    try:
        status, data = post(again, pki, entry["body"].encode())
        assert status == 200
        # the receipt was signed by the first instance's key; the ack is
        # still the stored one, byte for byte
        assert data.decode() == entry["ack"]
        assert len(again.events()) == 1
    finally:
        again.stop()


def test_plaintext_http_is_not_served(delivered):
    receiver, _ = delivered
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse().read()


@pytest.mark.parametrize("spec,needle", [
    ("bogus", "unknown fault kind 'bogus'"),
    ("status=999", "status=999: invalid value"),
    ("500:prob=2", "prob=2: invalid value"),
    ("500:count=0", "count=0: invalid value"),
    ("500:colour=red", "unknown key 'colour'"),
    ("count=3", "names no fault kind"),
])
def test_bad_fault_spec_is_refused(pki, spec, needle):
    p = subprocess.run([RECEIVER_BIN, "--listen", "127.0.0.1:0", "--tls-cert", pki.server_cert,
                        "--tls-key", pki.server_key, "--fault", spec],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2
    assert needle in p.stderr


def test_receiver_requires_tls(pki):
    p = subprocess.run([RECEIVER_BIN, "--listen", "127.0.0.1:0"], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == 2 and "--tls-cert: required" in p.stderr
