# SPDX-License-Identifier: Apache-2.0
"""Every row of the decision table of DESIGN §7, through the CLI and through
the endpoint, with the documents checked by an independent verifier and the
database read directly to prove what moved and what did not."""
import hashlib
import json

import pytest

from lvtest import run
from witnesslib import (DbView, EXIT, STATUS, CliSubmitter, HttpSubmitter, Server, Vault, h, head,
                        make_submitter, public_key_hex, snapshot, stored_receipts,
                        verify_document)

T, S = "ten_1", "str_1"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One token, database and server for the module; every test works on
    its own tenant, so the rows of the table do not see each other."""
    vault = Vault(tmp_path_factory.mktemp("table"))
    subs = {"cli": CliSubmitter(vault), "http": HttpSubmitter(vault)}
    pk = public_key_hex(vault)
    yield vault, subs, pk
    subs["http"].close()


@pytest.fixture(params=["cli", "http"])
def door(request, shared):
    vault, subs, pk = shared
    sub = subs[request.param]
    sub.pk = pk
    sub.T = "ten_" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    sub.S = S
    return sub


def chain(door, n, tag="a", stream=None, start=0):
    """Accepts checkpoints start..start+n-1 of one chain; returns their hashes."""
    stream = stream or door.S
    hashes = {}
    for seq in range(start, start + n):
        prev = hashes.get(seq - 1)
        o = door.submit(door.T, stream, f"chk_{tag}{seq}", seq, h(tag, stream, seq), prev,
                        setup=True)
        assert o.result == "accepted", o
        hashes[seq] = h(tag, stream, seq)
    return hashes


def check_receipt(door, o, seq, chash, prev, cid=None):
    doc = verify_document(o.body, door.pk)
    st = doc["statement"]
    assert doc["result"] == "accepted"
    assert st == {
        "kind": "witness_receipt", "witness_id": "inst-test", "tenant_id": door.T, "stream_id": door.S,
        "checkpoint_id": cid or st["checkpoint_id"], "checkpoint_seq_no": seq,
        "checkpoint_hash": chash, "previous_checkpoint_hash": prev,
        "witnessed_at": st["witnessed_at"]}
    return doc


def check_fork(door, o, reason, accepted, submitted):
    """accepted/submitted: (seq, hash) pairs the evidence must name."""
    assert o.result == "fork_evidence", o
    if door.name == "cli":
        assert o.raw.returncode == EXIT["fork_evidence"]
    else:
        assert o.raw[0] == STATUS["fork_evidence"]
    doc = verify_document(o.body, door.pk)
    st = doc["statement"]
    assert doc["result"] == "fork_evidence"
    assert st["kind"] == "fork_evidence" and st["reason"] == reason
    assert st["result"] == "verifier_rejects_ambiguous_history"
    assert st["detected_by"] == "local_vault_witness"
    assert (st["tenant_id"], st["stream_id"], st["witness_id"]) == (door.T, door.S, "inst-test")
    acc, sub = st["accepted_checkpoint"], st["submitted_checkpoint"]
    assert (acc["checkpoint_seq_no"], acc["checkpoint_hash"]) == accepted
    assert (sub["checkpoint_seq_no"], sub["checkpoint_hash"]) == submitted
    assert st["conflicting_checkpoints"] == [
        {"checkpoint_id": acc["checkpoint_id"], "checkpoint_head_hash": acc["checkpoint_hash"]},
        {"checkpoint_id": sub["checkpoint_id"], "checkpoint_head_hash": sub["checkpoint_hash"]}]
    # The accepted side points at the receipt that was really issued for it.
    stored = stored_receipts(door.vault)[(door.T, door.S, acc["checkpoint_seq_no"])]
    assert acc["receipt_statement_hash"] == json.loads(stored[1])["statement_hash"]
    return doc


def test_first_use_is_accepted_without_previous_hash(door):
    o = door.submit(door.T, door.S, "chk_0", 0, h("a", 0))
    assert o.result == "accepted", o
    check_receipt(door, o, 0, h("a", 0), None, "chk_0")
    assert head(door.vault, door.T, door.S) == 0


def test_first_use_at_any_seq_records_the_given_previous_hash(door):
    o = door.submit(door.T, door.S, "chk_41", 41, h("a", 41), h("a", 40))
    assert o.result == "accepted", o
    check_receipt(door, o, 41, h("a", 41), h("a", 40))
    assert head(door.vault, door.T, door.S) == 41


def test_next_seq_with_matching_previous_hash_advances_the_head(door):
    hashes = chain(door, 1)
    o = door.submit(door.T, door.S, "chk_1", 1, h("b", 1), hashes[0])
    assert o.result == "accepted", o
    check_receipt(door, o, 1, h("b", 1), hashes[0], "chk_1")
    assert head(door.vault, door.T, door.S) == 1
    assert stored_receipts(door.vault)[(door.T, door.S, 1)] == (h("b", 1), o.body[:-1])


def test_same_seq_and_hash_as_head_replays_the_stored_receipt_byte_identical(door):
    first = door.submit(door.T, door.S, "chk_0", 0, h("a", 0))
    assert first.result == "accepted"
    before = snapshot(door.vault)
    again = door.submit(door.T, door.S, "chk_0", 0, h("a", 0))
    assert again.result == "replayed", again
    assert again.body == first.body
    assert snapshot(door.vault) == before
    # Also after the head moved on and back: the replay is of the head only,
    # and stays the very same bytes the first answer carried.
    o1 = door.submit(door.T, door.S, "chk_1", 1, h("a", 1), h("a", 0))
    again1 = door.submit(door.T, door.S, "chk_1", 1, h("a", 1), h("a", 0))
    assert again1.result == "replayed" and again1.body == o1.body


def test_replay_answer_is_the_same_through_the_other_door(door, tmp_path):
    first = door.submit(door.T, door.S, "chk_0", 0, h("a", 0))
    other = HttpSubmitter(door.vault) if door.name == "cli" else CliSubmitter(door.vault)
    try:
        again = other.submit(door.T, door.S, "chk_0", 0, h("a", 0))
    finally:
        if other.name == "http":
            other.close()
    assert again.result == "replayed" and again.body == first.body


def test_same_seq_as_head_with_another_hash_is_conflicting(door):
    hashes = chain(door, 3)
    before = snapshot(door.vault)
    o = door.submit(door.T, door.S, "chk_x2", 2, h("x", 2), hashes[1])
    check_fork(door, o, "conflicting_checkpoint", (2, hashes[2]), (2, h("x", 2)))
    after = snapshot(door.vault)
    assert head(door.vault, door.T, door.S) == 2
    assert after["checkpoints"] == before["checkpoints"] and after["heads"] == before["heads"]
    assert len(after["fork_evidence"]) == len(before["fork_evidence"]) + 1


def test_older_seq_with_another_hash_is_conflicting(door):
    hashes = chain(door, 4)
    o = door.submit(door.T, door.S, "chk_x1", 1, h("x", 1), hashes[0])
    check_fork(door, o, "conflicting_checkpoint", (1, hashes[1]), (1, h("x", 1)))
    assert head(door.vault, door.T, door.S) == 3


def test_older_seq_with_the_same_hash_is_stale(door):
    hashes = chain(door, 4)
    before = snapshot(door.vault)
    o = door.submit(door.T, door.S, "chk_a1", 1, hashes[1], hashes[0])
    check_fork(door, o, "stale_checkpoint", (3, hashes[3]), (1, hashes[1]))
    after = snapshot(door.vault)
    assert head(door.vault, door.T, door.S) == 3 and after["checkpoints"] == before["checkpoints"]


def test_seq_before_first_use_is_stale(door):
    hashes = chain(door, 2, start=10)
    o = door.submit(door.T, door.S, "chk_3", 3, h("z", 3), h("z", 2))
    check_fork(door, o, "stale_checkpoint", (11, hashes[11]), (3, h("z", 3)))
    assert head(door.vault, door.T, door.S) == 11


def test_next_seq_with_another_previous_hash_is_divergent(door):
    hashes = chain(door, 2)
    before = snapshot(door.vault)
    o = door.submit(door.T, door.S, "chk_2", 2, h("y", 2), h("y", 1))
    doc = check_fork(door, o, "divergent_history", (1, hashes[1]), (2, h("y", 2)))
    assert doc["statement"]["submitted_checkpoint"]["previous_checkpoint_hash"] == h("y", 1)
    after = snapshot(door.vault)
    assert head(door.vault, door.T, door.S) == 1 and after["checkpoints"] == before["checkpoints"]
    # The honest successor is still accepted afterwards: evidence never moves state.
    o = door.submit(door.T, door.S, "chk_2", 2, h("a", door.S, 2), hashes[1])
    assert o.result == "accepted", o


def test_seq_beyond_next_is_a_gap_with_nothing_signed_or_stored(door):
    chain(door, 2)
    before = snapshot(door.vault)
    o = door.submit(door.T, door.S, "chk_5", 5, h("a", 5), h("a", 4))
    assert o.result == "checkpoint_gap", o
    if door.name == "cli":
        assert o.raw.returncode == 6 and o.body == b""
        assert "checkpoint_gap" in o.detail and "head at 1" in o.detail
    else:
        status, _, body = o.raw[0], o.raw[1], o.body
        assert status == 422
        err = json.loads(body)
        assert err["error"] == "checkpoint_gap" and err["head_seq_no"] == 1
        assert "signature" not in err and "statement" not in err
    assert snapshot(door.vault) == before


def test_repeated_fork_returns_the_stored_evidence_byte_identical(door):
    hashes = chain(door, 2)
    first = door.submit(door.T, door.S, "chk_x1", 1, h("x", 1), hashes[0])
    assert first.result == "fork_evidence"
    before = snapshot(door.vault)
    again = door.submit(door.T, door.S, "chk_x1", 1, h("x", 1), hashes[0])
    assert again.result == "fork_evidence" and again.body == first.body
    assert snapshot(door.vault) == before


def test_extending_a_head_without_previous_hash_is_bad_input(door):
    chain(door, 1)
    before = snapshot(door.vault)
    o = door.submit(door.T, door.S, "chk_1", 1, h("a", 1))
    assert o.result == "bad_input", o
    assert "previous_checkpoint_hash" in o.detail and "required" in o.detail
    assert snapshot(door.vault) == before


def test_streams_tenants_and_witness_ids_are_independent(door):
    chain(door, 2)
    o = door.submit(door.T + "_b", door.S, "chk_0", 0, h("other", 0))
    assert o.result == "accepted", o
    o = door.submit(door.T, "str_2", "chk_7", 7, h("other", 7))
    assert o.result == "accepted", o
    assert head(door.vault, door.T, door.S) == 1
    assert head(door.vault, door.T + "_b", door.S) == 0 and head(door.vault, door.T, "str_2") == 7


def test_output_has_public_key_and_signature_and_no_private_material(door):
    o = door.submit(door.T, door.S, "chk_0", 0, h("a", 0))
    doc = verify_document(o.body, door.pk)
    assert set(doc["signature"]) == {"alg", "kid", "signature"}
    assert doc["public_key"]["kid"] == doc["signature"]["kid"]
    pin = open(door.vault.env["ATTESTO_LOCAL_VAULT_PIN_FILE"]).read().strip()
    text = o.body.decode()
    for forbidden in ("PRIVATE", "private", "secret", pin):
        assert forbidden not in text
    # Only the documented members, nowhere any extra field.
    assert set(doc) == {"result", "statement", "statement_hash", "signature", "public_key"}
    assert "-----BEGIN PUBLIC KEY-----" in doc["public_key"]["public_key_pem"]


def test_a_tampered_document_fails_the_independent_verifier(door):
    o = door.submit(door.T, door.S, "chk_0", 0, h("a", 0))
    verify_document(o.body, door.pk)
    forged = o.body.replace(b'"checkpoint_seq_no":0', b'"checkpoint_seq_no":1')
    with pytest.raises(Exception):
        verify_document(forged, door.pk)
    # A statement signed for one domain does not verify under the other.
    doc = json.loads(o.body)
    doc["statement"]["kind"] = "fork_evidence"
    with pytest.raises(Exception):
        verify_document((json.dumps(doc, separators=(",", ":")) + "\n").encode(), door.pk)


def test_forks_verb_lists_stored_evidence(shared):
    vault = DbView(shared[0], "forks")
    cli = CliSubmitter(vault)
    cli.T, cli.S = T, S
    hashes = chain(cli, 3)
    f1 = cli.submit(T, S, "chk_x1", 1, h("x", 1), hashes[0])
    f2 = cli.submit(T, S, "chk_3", 3, h("y", 3), h("y", 2))
    assert (f1.result, f2.result) == ("fork_evidence", "fork_evidence")
    p = vault.run(["witness-forks", "--json"], check=0)
    assert p.stdout.encode() == f1.body + f2.body
    p = vault.run(["witness-forks", "--json", "--stream-id", "nope"], check=0)
    assert p.stdout == ""
    p = vault.run(["witness-forks", "--tenant-id", "bad tenant"], check=2)
    assert "--tenant-id" in p.stderr


def test_witness_id_defaults_to_the_installation_id_and_is_required(shared):
    vault = DbView(shared[0], "witness-id")
    env = dict(vault.env, ATTESTO_LOCAL_VAULT_WITNESS_ID="wit_9")
    p = run(["witness-checkpoint", "--tenant-id", T, "--stream-id", S, "--checkpoint-id", "c",
             "--checkpoint-seq-no", "0", "--checkpoint-hash", h(0)], env=env, check=0)
    assert json.loads(p.stdout)["statement"]["witness_id"] == "wit_9"
    p = vault.run(["witness-checkpoint", "--tenant-id", T, "--stream-id", S, "--checkpoint-id",
                   "c", "--checkpoint-seq-no", "0", "--checkpoint-hash", h(0)], check=0)
    assert json.loads(p.stdout)["statement"]["witness_id"] == "inst-test"
    env = dict(vault.env)
    del env["ATTESTO_LOCAL_VAULT_INSTALLATION_ID"]
    p = run(["witness-checkpoint", "--tenant-id", T, "--stream-id", S, "--checkpoint-id", "c",
             "--checkpoint-seq-no", "0", "--checkpoint-hash", h(0)], env=env, check=2)
    assert "--witness-id: required" in p.stderr


def test_token_problems_exit_5_and_store_nothing(tmp_path):
    vault = Vault(tmp_path, keys=False)
    p = vault.run(["witness-checkpoint", "--tenant-id", T, "--stream-id", S, "--checkpoint-id",
                   "c", "--checkpoint-seq-no", "0", "--checkpoint-hash", h(0)], check=5)
    assert p.stdout == ""
    assert snapshot(vault) is None
    # The same token, now with keys, but the URI names a key that is not there.
    run(["keys", "init"], env=vault.env, check=0)
    env = dict(vault.env, ATTESTO_LOCAL_VAULT_SIGNING_KEY="pkcs11:token=attesto;object=nope;type=private")
    p = run(["witness-checkpoint", "--tenant-id", T, "--stream-id", S, "--checkpoint-id", "c",
             "--checkpoint-seq-no", "0", "--checkpoint-hash", h(0)], env=env, check=5)
    assert p.stdout == "" and snapshot(vault) is None
