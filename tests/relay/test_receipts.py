# SPDX-License-Identifier: Apache-2.0
"""Pinned receipt keys (--receipt-keys-file): against the reference receiver
over real TLS and a fresh SoftHSM token, an ack counts only when its receipt
verifies under the pinned key its kid names. An unpinned receiver key and a
receipt signed with the right kid but the wrong key deliver nothing; a
rotation with both keys pinned delivers everything. Bad keys files are
refused at start with one line, exit 2, nothing written."""
import json
import os
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import lvtest
from relaylib import (RECEIPT_DOMAIN, drain_once, enqueue, event_id, items, show, status)

# One item per stream: a failed head holds back the rest of its stream.
REFS = [("str_1", "a"), ("str_2", "b"), ("str_3", "c")]


def receipt_key_pem(path):
    """A fresh Ed25519 receipt key for the receiver (PKCS#8 PEM) and its
    raw public key."""
    k = ed25519.Ed25519PrivateKey.generate()
    with open(path, "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    return str(path), k.public_key().public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)


def printed_key(receiver):
    """The receiver's receipt key exactly as it printed it (receipt_key)."""
    return {"alg": "Ed25519", "kid": receiver.receipt_kid,
            "public_key_hex": receiver.receipt_public_key.hex()}


def pin(vault, tmp_path, keys, name="receipt-keys.json"):
    path = tmp_path / name
    path.write_text(json.dumps(keys))
    vault.env["ATTESTO_LOCAL_VAULT_RECEIPT_KEYS_FILE"] = str(path)
    return path


def independent_verify(receipt, public_key):
    """python3-cryptography, not the product's code: the receipt's signature
    over the domain, 0x0A and JCS of the receipt without its signature (the
    members are identifiers, hex and integers, so a sorted compact dump is
    their JCS form)."""
    sig = bytes.fromhex(receipt["receipt"]["signature"])
    statement = {k: v for k, v in receipt.items() if k != "receipt"}
    canon = json.dumps(statement, sort_keys=True, separators=(",", ":"))
    ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(
        sig, RECEIPT_DOMAIN + canon.encode())


def drain_until_attempts(vault, n):
    """drain-once until every item has had n attempts (the backoff is
    scaled down to milliseconds); returns the stderr of every pass."""
    logs = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p, s = drain_once(vault)
        logs += p.stderr
        if all(i["attempts"] >= n for i in items(vault)):
            return logs
        time.sleep(0.05)
    raise AssertionError("the items were not attempted often enough")


def test_unpinned_receiver_key_delivers_nothing_then_pinned_delivers_all(vault, start_receiver,
                                                                         tmp_path):
    receiver = start_receiver(vault)
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pin(vault, tmp_path, [{"alg": "Ed25519", "kid": "rcv-someone-else",
                           "public_key_hex": other.hex()}])
    for s, r in REFS:
        enqueue(vault, s, r)
    logs = drain_until_attempts(vault, 2)
    assert counts_of(vault) == {"queued": 3}
    attempts = 0
    for _, r in REFS:
        it = show(vault, event_id(r))
        assert it["state"] == "queued" and it["last_error"] == "receipt_key_unknown", it
        assert not it.get("receipt")
        attempts += it["attempts"]
    # Every attempt is in the log with its reason, and no other reason.
    reasons = [l for l in logs.splitlines() if "attempt" in l and "failed" in l]
    assert len(reasons) == attempts, logs
    assert all("receipt_key_unknown" in l for l in reasons), logs
    # The receiver did accept them: only the vault's check held them back.
    assert receiver.event_count() == 3

    # The receiver's key pinned as it printed it, beside the other: delivered.
    pin(vault, tmp_path, [{"alg": "Ed25519", "kid": "rcv-someone-else",
                           "public_key_hex": other.hex()}, printed_key(receiver)])
    deadline = time.monotonic() + 30
    while counts_of(vault).get("receipted", 0) < 3 and time.monotonic() < deadline:
        drain_once(vault)
        time.sleep(0.05)
    assert counts_of(vault) == {"receipted": 3}
    for _, r in REFS:
        it = show(vault, event_id(r))
        independent_verify(it["receipt"], receiver.receipt_public_key)
        assert it["receipt"]["receipt"]["kid"] == receiver.receipt_kid


def counts_of(vault):
    return {k: v for k, v in status(vault)["counts"].items() if v}


def test_pinned_receiver_key_delivers_all_in_one_pass(vault, start_receiver, tmp_path):
    receiver = start_receiver(vault)
    pin(vault, tmp_path, [printed_key(receiver)])
    for s, r in REFS:
        enqueue(vault, s, r)
    p, s = drain_once(vault)
    assert p.returncode == 0, p.stderr
    assert s == {"delivered": 3, "retry_scheduled": 0, "dead_lettered": 0, "remaining": 0}
    for _, r in REFS:
        it = show(vault, event_id(r))
        assert it["state"] == "receipted" and it["attempts"] == 1
        independent_verify(it["receipt"], receiver.receipt_public_key)


def test_right_kid_wrong_key_is_an_invalid_signature(vault, start_receiver, tmp_path):
    # The vault pins key A under kid rcv-a; the receiver names rcv-a but
    # signs with a key of its own.
    _, pk_a = receipt_key_pem(tmp_path / "a.pem")
    receiver = start_receiver(vault, extra=["--receipt-kid", "rcv-a"])
    assert receiver.receipt_kid == "rcv-a" and receiver.receipt_public_key != pk_a
    pin(vault, tmp_path, [{"alg": "Ed25519", "kid": "rcv-a", "public_key_hex": pk_a.hex()}])
    for s, r in REFS:
        enqueue(vault, s, r)
    logs = drain_until_attempts(vault, 2)
    assert counts_of(vault) == {"queued": 3}
    for _, r in REFS:
        it = show(vault, event_id(r))
        assert it["last_error"] == "receipt_signature_invalid" and not it.get("receipt"), it
    reasons = [l for l in logs.splitlines() if "attempt" in l and "failed" in l]
    assert reasons and all("receipt_signature_invalid" in l for l in reasons), logs


def test_a_pinned_key_one_bit_off_is_an_invalid_signature(vault, start_receiver, tmp_path):
    """The receiver's kid pinned, but with one bit of its public key
    flipped: the receipt no longer verifies."""
    receiver = start_receiver(vault)
    pk = bytearray(receiver.receipt_public_key)
    pk[5] ^= 0x01
    pin(vault, tmp_path, [{"alg": "Ed25519", "kid": receiver.receipt_kid,
                           "public_key_hex": bytes(pk).hex()}])
    enqueue(vault, "str_1", "a")
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["delivered"] == 0
    assert show(vault, event_id("a"))["last_error"] == "receipt_signature_invalid"


def test_rotation_items_under_the_old_and_the_new_key_are_delivered(vault, start_receiver,
                                                                    tmp_path):
    old_pem, old_pk = receipt_key_pem(tmp_path / "old.pem")
    new_pem, new_pk = receipt_key_pem(tmp_path / "new.pem")
    r_old = start_receiver(vault, extra=["--receipt-key", old_pem])
    assert r_old.receipt_public_key == old_pk
    keys = [printed_key(r_old)]
    pin(vault, tmp_path, keys)
    enqueue(vault, "str_1", "before-1")
    enqueue(vault, "str_2", "before-2")
    p, s = drain_once(vault)
    assert p.returncode == 0 and s["delivered"] == 2, p.stderr
    r_old.stop()

    # The receiver rotates; the operator pins the new key beside the old one.
    r_new = start_receiver(vault, extra=["--receipt-key", new_pem])
    assert r_new.receipt_public_key == new_pk and r_new.receipt_kid != r_old.receipt_kid
    keys.append(printed_key(r_new))
    pin(vault, tmp_path, keys)
    enqueue(vault, "str_1", "after-1")
    enqueue(vault, "str_2", "after-2")
    p, s = drain_once(vault)
    assert p.returncode == 0 and s["delivered"] == 2, p.stderr

    by_kid = {r_old.receipt_kid: old_pk, r_new.receipt_kid: new_pk}
    seen = {}
    for it in items(vault):
        assert it["state"] == "receipted", it
        rc = show(vault, it["event_id"])["receipt"]
        kid = rc["receipt"]["kid"]
        independent_verify(rc, by_kid[kid])
        seen[it["event_id"].rsplit(":", 1)[1]] = kid
    assert seen == {"before-1": r_old.receipt_kid, "before-2": r_old.receipt_kid,
                    "after-1": r_new.receipt_kid, "after-2": r_new.receipt_kid}


def test_rotation_without_the_new_key_pinned_holds_the_new_items(vault, start_receiver,
                                                                 tmp_path):
    old_pem, _ = receipt_key_pem(tmp_path / "old.pem")
    r_old = start_receiver(vault, extra=["--receipt-key", old_pem])
    pin(vault, tmp_path, [printed_key(r_old)])
    r_old.stop()
    start_receiver(vault)  # a new key the operator has not pinned
    enqueue(vault, "str_1", "x")
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["delivered"] == 0
    assert show(vault, event_id("x"))["last_error"] == "receipt_key_unknown"


# ---- the keys file: refusals at start, exit 2, nothing written ----

GOOD = {"alg": "Ed25519", "kid": "rcv-1", "public_key_hex": "ab" * 32}


@pytest.mark.parametrize("content,needle", [
    ("", "receipt-keys.json: "),
    ("{}", "must be a JSON array of"),
    ("[]", "must pin at least one key"),
    ("[1]", "[0]: must be an object"),
    (json.dumps([{**GOOD, "alg": "RS256"}]), '[0].alg: must be "Ed25519"'),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "alg"}]), "[0].alg: required"),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "kid"}]), "[0].kid: required"),
    (json.dumps([{**GOOD, "kid": "bad kid"}]), "[0].kid: must be 1-128 bytes"),
    (json.dumps([{**GOOD, "kid": "k" * 129}]), "[0].kid: must be 1-128 bytes"),
    (json.dumps([GOOD, {**GOOD, "public_key_hex": "cd" * 32}]), "[1].kid: rcv-1: given twice"),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "public_key_hex"}]),
     "[0].public_key_hex: required"),
    (json.dumps([{**GOOD, "public_key_hex": "ab" * 31}]), "[0].public_key_hex: must be 64 hex"),
    (json.dumps([{**GOOD, "public_key_hex": "zz" * 32}]), "[0].public_key_hex: must be 64 hex"),
    (json.dumps([{**GOOD, "public_key": "ab" * 32}]), "[0].public_key: unknown member"),
    ('[{"alg":"Ed25519","alg":"Ed25519","kid":"k","public_key_hex":"' + "ab" * 32 + '"}]',
     "duplicate"),
    (json.dumps([GOOD] * 65).replace('"rcv-1"', '"k"'), "at most 64 keys"),
])
@pytest.mark.parametrize("verb", ["drain-once", "drain-loop"])
def test_bad_keys_file_is_refused_at_start(bare_env, tmp_path, content, needle, verb):
    path = tmp_path / "receipt-keys.json"
    path.write_text(content)
    bare_env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = "https://127.0.0.1:9/x"
    bare_env["ATTESTO_LOCAL_VAULT_RECEIPT_KEYS_FILE"] = str(path)
    p = lvtest.run([verb], env=bare_env, check=2, timeout=20)
    assert needle in p.stderr, p.stderr
    assert p.stderr.startswith(f"{verb}: --receipt-keys-file: {path}: "), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not os.path.exists(bare_env["ATTESTO_LOCAL_VAULT_SPOOL_DB"])


def test_missing_keys_file_is_refused_by_flag(bare_env, tmp_path):
    bare_env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = "https://127.0.0.1:9/x"
    missing = tmp_path / "nope.json"
    p = lvtest.run(["--receipt-keys-file", str(missing), "drain-once"], env=bare_env, check=2)
    assert f"--receipt-keys-file: {missing}: cannot be read" in p.stderr
    assert not os.path.exists(bare_env["ATTESTO_LOCAL_VAULT_SPOOL_DB"])


def test_bad_keys_file_leaves_the_spool_untouched(vault, start_receiver, tmp_path):
    start_receiver(vault)
    enqueue(vault, "str_1", "kept")
    bad = tmp_path / "bad.json"
    bad.write_text("[{}]")
    vault.env["ATTESTO_LOCAL_VAULT_RECEIPT_KEYS_FILE"] = str(bad)
    p = vault.run(["drain-once"], check=2)
    assert "[0].alg: required" in p.stderr
    it = show(vault, event_id("kept"))
    assert it["state"] == "queued" and it["attempts"] == 0
