# SPDX-License-Identifier: Apache-2.0
"""The worked example of docs/protocol.md §7, recomputed from the document's
own text with python3-cryptography (not the product's code): every hash,
both signatures (the RFC 8032 test keys are public and Ed25519 is
deterministic), the kids and the signed receipt. Then the product itself
drains an attestation with the receipt key pinned exactly as the document
prints it."""
import hashlib
import json
import os
import re

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                                Ed25519PublicKey)

import lvtest
from relaylib import ENVELOPE_DOMAIN, RECEIPT_DOMAIN, drain_once, enqueue, event_id, show

DOC = os.path.join(lvtest.SOURCE_DIR, "docs", "protocol.md")
TEST1 = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"  # RFC 8032 §7.1
TEST2 = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"


def jcs(o):
    """JCS of the example's objects: identifiers, hex and small integers,
    so a sorted compact dump is their canonical form."""
    return json.dumps(o, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture(scope="module")
def ex():
    text = open(DOC, encoding="utf-8").read()
    example = text[text.index("## 7. Worked example"):]
    lines = example.splitlines()

    def line_starting(prefix):
        found = [l for l in lines if l.startswith(prefix)]
        assert len(found) == 1, prefix
        return found[0]

    def after(marker):
        return lines[lines.index(marker) + 1]

    return {
        "payload_hash": re.search(r"= ([0-9a-f]{64})\n", example).group(1),
        "body": line_starting('{"envelope_version":1,"event_id":"local-vault:inst-example:ref-0001",'
                              '"event_type":"source.attestation","installation_id":"inst-example",'
                              '"local_signature"'),
        "envelope_statement": after("attesto.local-vault.relay-envelope.v1"),
        "signature": re.search(r"Signature \(Ed25519.*?```\n([0-9a-f]{128})\n", example,
                               re.S).group(1),
        "envelope_hash": re.search(r"envelopeHash = SHA-256\(body\) = ([0-9a-f]{64})",
                                   example).group(1),
        "answer": json.loads(line_starting('{"localVaultAck":')),
        "receipt_statement": after("attesto.local-vault.receiver-receipt.v1"),
        "pinned": line_starting('[{"alg":"Ed25519","kid":"rcv-'),
    }


def test_the_envelope_recomputes(ex):
    assert hashlib.sha256(b'{"reading":42,"sensor":"s-1"}').hexdigest() == ex["payload_hash"]
    env = json.loads(ex["body"])
    assert env["payload_hash"] == ex["payload_hash"]
    unsigned = {k: v for k, v in env.items() if k != "local_signature"}
    assert jcs(unsigned) == ex["envelope_statement"]
    msg = ENVELOPE_DOMAIN + ex["envelope_statement"].encode()
    assert len(msg) == 336
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(TEST1))
    assert key.sign(msg).hex() == ex["signature"] == env["local_signature"]["signature"]
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert env["local_signature"]["kid"] == "lv-" + hashlib.sha256(pub).hexdigest()[:16]
    assert len(ex["body"].encode()) == 505
    assert jcs(env) == ex["body"]
    assert hashlib.sha256(ex["body"].encode()).hexdigest() == ex["envelope_hash"]


def test_the_signed_receipt_recomputes(ex):
    ack, rc = ex["answer"]["localVaultAck"], ex["answer"]["receipt"]
    assert ack["envelopeHash"] == rc["event_hash"] == ex["envelope_hash"]
    statement = {k: v for k, v in rc.items() if k != "receipt"}
    assert jcs(statement) == ex["receipt_statement"]
    msg = RECEIPT_DOMAIN + ex["receipt_statement"].encode()
    assert len(msg) == 248 and len(ex["receipt_statement"]) == 208
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(TEST2))
    assert key.sign(msg).hex() == rc["receipt"]["signature"]
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # The pinned form printed in the document is TEST 2's, under its kid.
    pinned = json.loads(ex["pinned"])
    assert pinned == [{"alg": "Ed25519", "kid": "rcv-" + hashlib.sha256(pub).hexdigest()[:16],
                       "public_key_hex": pub.hex()}]
    assert rc["receipt"] == {"alg": "Ed25519", "kid": pinned[0]["kid"],
                             "signature": rc["receipt"]["signature"]}
    Ed25519PublicKey.from_public_bytes(pub).verify(bytes.fromhex(rc["receipt"]["signature"]), msg)
    sev = hashlib.sha256(f"{rc['stream_id']}\n{rc['seq_no']}\n{rc['event_hash']}".encode())
    assert rc["stream_event_id"] == "sev_" + sev.hexdigest()[:24]
    # One flipped byte anywhere in the signed message: it no longer verifies.
    for i in range(0, len(msg), 7):
        bad = bytearray(msg)
        bad[i] ^= 0x01
        with pytest.raises(InvalidSignature):
            Ed25519PublicKey.from_public_bytes(pub).verify(
                bytes.fromhex(rc["receipt"]["signature"]), bytes(bad))


def test_the_product_verifies_receipts_under_the_key_pinned_as_documented(ex, vault,
                                                                           start_receiver,
                                                                           tmp_path):
    pem = tmp_path / "test2.key"
    pem.write_bytes(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(TEST2)).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    receiver = start_receiver(vault, extra=["--receipt-key", str(pem)])
    pinned = tmp_path / "receipt-keys.json"
    pinned.write_text(ex["pinned"] + "\n")
    vault.env["ATTESTO_LOCAL_VAULT_RECEIPT_KEYS_FILE"] = str(pinned)
    assert receiver.receipt_kid == json.loads(ex["pinned"])[0]["kid"]
    enqueue(vault, "str_1", "ref-0001", payload={"sensor": "s-1", "reading": 42})
    p, s = drain_once(vault)
    assert p.returncode == 0 and s["delivered"] == 1, p.stderr
    rc = show(vault, event_id("ref-0001"))["receipt"]
    assert rc["receipt"]["kid"] == "rcv-39f713d0a644253f"
