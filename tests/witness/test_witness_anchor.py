# SPDX-License-Identifier: Apache-2.0
"""The witness state anchored on the token (docs/witness.md, "The anchor"),
on a real SoftHSM token and real SQLite files: a restored backup, a second
database and a deleted database make the witness refuse to sign (exit 8,
HTTP 503 state_integrity) with not one C_Sign on the token (counted by the
PKCS#11 shim); stored receipts still replay; `witness-state adopt --confirm`
re-anchors and its signed state_adoption statement verifies with
python3-cryptography; a crash between COMMIT and the anchor write rolls the
anchor forward instead of wedging the witness."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lvtest import BUILD_DIR, LV_BIN
from witnesslib import (Server, Vault, cli_args, h, jcs, public_key_hex, request_body, snapshot,
                        verify_document)

ADOPTION_DOMAIN = b"attesto.local-vault.state-adoption.v1"
SHIM = os.environ.get("LV_SHIM", os.path.join(BUILD_DIR, "tests", "libp11shim.so"))
T, S = "ten_anchor", "str_anchor"


@pytest.fixture
def vault(tmp_path):
    """A fresh token per test, behind the shim that logs every C_Sign,
    C_CreateObject and C_DestroyObject (rules with CKR_OK fail nothing)."""
    v = Vault(tmp_path)
    v.pk = public_key_hex(v)
    v.shim_log = os.path.join(v.dir, "shim.log")
    v.shim_rules = os.path.join(v.dir, "shim.rules")
    with open(v.shim_rules, "w") as f:
        f.write("C_Sign CKR_OK times=0\nC_CreateObject CKR_OK times=0\n"
                "C_DestroyObject CKR_OK times=0\n")
    v.env["LV_SHIM_MODULE"] = v.env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"]
    v.env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"] = SHIM
    v.env["LV_SHIM_RULES"] = v.shim_rules
    v.env["LV_SHIM_LOG"] = v.shim_log
    v.env["ATTESTO_LOCAL_VAULT_WITNESS_ID"] = "wit_anchor"
    v.db = v.env["ATTESTO_LOCAL_VAULT_WITNESS_DB"]
    return v


def calls(vault, fn):
    try:
        with open(vault.shim_log) as f:
            return sum(1 for l in f if f" {fn} " in l)
    except FileNotFoundError:
        return 0


def open_calls(vault, fn):
    """How many calls of fn one token open makes before any witness work:
    the capability probe's known-answer test (docs/token.md) creates and
    destroys session objects. Measured with witness-state show, which
    opens the token and writes nothing; fault rules skip that many."""
    before = calls(vault, fn)
    assert state(vault)[0] == 0
    return calls(vault, fn) - before


def signs_of(vault, pid):
    """C_Sign calls of one process. Every process that opens the signing
    key makes one: the key check's probe (token_check_signing_key)."""
    try:
        with open(vault.shim_log) as f:
            return sum(1 for l in f if l.startswith(f"{pid} C_Sign "))
    except FileNotFoundError:
        return 0


def submit(vault, seq, chash, prev=None, env=None):
    proc = subprocess.Popen([LV_BIN] + cli_args(T, S, f"c{seq}", seq, chash, prev),
                            env=env or vault.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    p.signs = signs_of(vault, proc.pid) - 1  # beyond the probe
    return p


def copy_db(src, dst):
    """A file copy of a closed database, as a backup tool would take it."""
    for ext in ("", "-wal", "-shm"):
        if os.path.exists(dst + ext):
            os.unlink(dst + ext)
        if os.path.exists(src + ext):
            shutil.copy2(src + ext, dst + ext)


def assert_refused(p, cause):
    assert p.returncode == 8, (p.returncode, p.stderr)
    assert p.signs == 0, "a refused witness must not sign"
    err = p.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(f"witness-checkpoint: {cause}: "), err
    assert p.stdout == b""


def verify_adoption(body, pk_hex):
    """The state_adoption document, checked independently of the C code."""
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    doc = json.loads(body)
    assert list(doc) == ["result", "statement", "statement_hash", "signature", "public_key"]
    assert doc["result"] == "state_adoption"
    st = doc["statement"]
    canonical = jcs(st)
    assert b'"statement":' + canonical + b',"statement_hash"' in body
    assert doc["statement_hash"] == hashlib.sha256(canonical).hexdigest()
    assert doc["public_key"]["public_key_hex"] == pk_hex
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(pk_hex)).verify(
        bytes.fromhex(doc["signature"]["signature"]), ADOPTION_DOMAIN + b"\n" + canonical)
    return st


def state(vault, env=None):
    p = subprocess.run([LV_BIN, "witness-state", "show", "--json"], env=env or vault.env,
                       capture_output=True, timeout=60)
    return p.returncode, json.loads(p.stdout), p.stderr.decode()


def test_first_run_anchors_itself_and_show_agrees(vault):
    assert submit(vault, 1, h(1)).returncode == 0
    code, st, _ = state(vault)
    assert code == 0 and st["state"] == "consistent"
    assert st["database"] == st["anchor"] and st["database"]["generation"] == 1
    assert len(st["anchors"]) == 1  # the old anchor was destroyed
    # A replay commits nothing: no new generation, no anchor written (only
    # the token open's own session objects).
    per_open = open_calls(vault, "C_CreateObject")
    creates = calls(vault, "C_CreateObject")
    assert submit(vault, 1, h(1)).returncode == 0
    assert calls(vault, "C_CreateObject") - creates == per_open
    assert state(vault)[1]["database"]["generation"] == 1


def test_restored_backup_is_state_rollback_and_signs_nothing(vault):
    assert submit(vault, 1, h(1)).returncode == 0
    backup = vault.db + ".backup"
    copy_db(vault.db, backup)
    a = submit(vault, 2, h("A"), h(1))
    assert a.returncode == 0
    verify_document(a.stdout, vault.pk)
    copy_db(backup, vault.db)
    before = snapshot(vault)

    b = submit(vault, 2, h("B"), h(1))
    assert_refused(b, "state_rollback")
    assert snapshot(vault) == before
    # What the database holds still replays, byte-identical, unsigned anew.
    r = submit(vault, 1, h(1))
    assert r.returncode == 0 and b"replayed" in r.stderr and r.signs == 0

    code, st, err = state(vault)
    assert code == 8 and st["state"] == "state_rollback", st
    assert st["database"]["generation"] == 1 and st["anchor"]["generation"] == 2
    assert "state_rollback" in err

    # The endpoint answers 503 state_integrity with the cause, signs nothing,
    # and still serves the stored receipt.
    srv = Server(vault, ["--rate-limit", "0"])
    try:
        status, _, body = srv.post(request_body(T, S, "c2", 2, h("B"), h(1)))
        assert status == 503, body
        err = json.loads(body)
        assert err["error"] == "state_integrity" and err["cause"] == "state_rollback", err
        status, _, body = srv.post(request_body(T, S, "c1", 1, h(1)))
        assert status == 200, body
    finally:
        assert srv.stop() == 0, srv.read_log()
    assert signs_of(vault, srv.proc.pid) <= 1, "the endpoint signed while refused"
    assert snapshot(vault) == before

    # The operator adopts the restored database deliberately; the statement
    # says so, signed, and the witness signs again (seq 2 hash B now).
    p = subprocess.run([LV_BIN, "witness-state", "adopt", "--confirm"], env=vault.env,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    st = verify_adoption(p.stdout, vault.pk)
    assert st["kind"] == "state_adoption" and st["cause"] == "state_rollback"
    assert st["database"]["generation"] == 1 and st["previous_anchor"]["generation"] == 2
    assert st["adopted_generation"] == 3
    assert p.stdout.decode() in [row[0] for row in _adoptions(vault)]
    assert submit(vault, 2, h("B"), h(1)).returncode == 0
    code, st, _ = state(vault)
    assert code == 0 and st["state"] == "consistent" and st["database"]["generation"] == 4


def _adoptions(vault):
    import sqlite3
    con = sqlite3.connect(f"file:{vault.db}?mode=ro", uri=True)
    try:
        return [(d + "\n",) for (d,) in con.execute("SELECT document FROM state_adoptions")]
    finally:
        con.close()


def test_second_database_is_foreign_and_signs_nothing(vault):
    assert submit(vault, 1, h(1)).returncode == 0
    other = dict(vault.env, ATTESTO_LOCAL_VAULT_WITNESS_DB=os.path.join(vault.dir, "other.sqlite3"))
    assert_refused(submit(vault, 2, h("C"), h(1), env=other), "foreign_database")
    # The anchored database goes on as before.
    assert submit(vault, 2, h(2), h(1)).returncode == 0


def test_deleted_database_is_foreign_until_adopted(vault):
    assert submit(vault, 1, h(1)).returncode == 0
    for ext in ("", "-wal", "-shm"):
        if os.path.exists(vault.db + ext):
            os.unlink(vault.db + ext)
    assert_refused(submit(vault, 2, h("C"), h(1)), "foreign_database")
    assert_refused(submit(vault, 1, h("D")), "foreign_database")
    p = subprocess.run([LV_BIN, "witness-state", "adopt"], env=vault.env, capture_output=True)
    assert p.returncode == 2 and b"--confirm" in p.stderr
    p = subprocess.run([LV_BIN, "witness-state", "adopt", "--confirm"], env=vault.env,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    st = verify_adoption(p.stdout, vault.pk)
    assert st["cause"] == "foreign_database"
    assert st["previous_anchor"]["database_id"] != st["database"]["database_id"]
    # verify (the CLI) accepts it under the pinned key, and refuses a forgery.
    doc = os.path.join(vault.dir, "adoption.json")
    with open(doc, "wb") as f:
        f.write(p.stdout)
    v = subprocess.run([LV_BIN, "verify", "--public-key", vault.pk, doc], env=vault.env,
                       capture_output=True, timeout=60)
    assert v.returncode == 0, v.stderr
    forged = p.stdout.replace(b'"cause":"foreign_database"', b'"cause":"none"')
    with open(doc, "wb") as f:
        f.write(forged)
    v = subprocess.run([LV_BIN, "verify", "--public-key", vault.pk, doc], env=vault.env,
                       capture_output=True, timeout=60)
    assert v.returncode != 0
    assert submit(vault, 1, h("D")).returncode == 0


def test_commit_without_its_anchor_rolls_forward(vault):
    """The anchor write fails after COMMIT (C_CreateObject refused): the
    batch is stored but not answered; the next run rolls the anchor forward
    (no adopt) and answers the stored receipt as a replay."""
    assert submit(vault, 1, h(1)).returncode == 0
    skip = open_calls(vault, "C_CreateObject")
    with open(vault.shim_rules, "w") as f:
        f.write(f"C_Sign CKR_OK times=0\nC_CreateObject CKR_DEVICE_ERROR after={skip} times=1\n")
    p = submit(vault, 2, h(2), h(1))
    assert p.returncode == 5 and p.stdout == b"", p.stderr
    with open(vault.shim_rules, "w") as f:
        f.write("C_Sign CKR_OK times=0\n")
    code, st, _ = state(vault)
    assert st["state"] == "ahead_by_one_batch" and code == 0, st
    p = submit(vault, 2, h(2), h(1))
    assert p.returncode == 0 and b"replayed" in p.stderr, p.stderr
    assert state(vault)[1]["state"] == "consistent"


def test_kill_9_between_commit_and_anchor_never_wedges_nor_forks(vault):
    """kill -9 of the CLI while its C_CreateObject (the anchor write) or
    C_DestroyObject (the old anchor) stalls, each round; then the witness
    signs again without adopt, and one hash per seq was ever accepted."""
    rounds = int(os.environ.get("LV_ANCHOR_KILL_ROUNDS", "24"))
    # seq 0 without faults: the database and its anchor exist from here on.
    assert submit(vault, 0, h("k", "first")).returncode == 0
    accepted = {0: {h("k", "first")}}
    seq, prev = 1, h("k", "first")
    # The token open's own creates and destroys come first: skipped, so
    # that the stall hits the anchor write and the old anchor's end.
    skip = {"C_Sign": 0, "C_CreateObject": open_calls(vault, "C_CreateObject"),
            "C_DestroyObject": open_calls(vault, "C_DestroyObject")}
    for i in range(rounds):
        # Before COMMIT (signing in the transaction), between COMMIT and the
        # anchor write, between the anchor write and the old anchor's end.
        stall = ["C_Sign", "C_CreateObject", "C_DestroyObject"][i % 3]
        with open(vault.shim_rules, "w") as f:
            f.write(f"{stall} CKR_OK after={skip[stall]} effect=stall times=0\n")
        chash = h("k", i)
        proc = subprocess.Popen([LV_BIN] + cli_args(T, S, f"c{seq}", seq, chash, prev),
                                env=vault.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Killed exactly while it stands in the stalled call.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and \
                not _stalled(vault, proc.pid, stall):
            time.sleep(0.01)
        assert proc.poll() is None, (i, stall, proc.communicate())
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        if proc.returncode == 0 and out:
            accepted.setdefault(seq, set()).add(chash)
        with open(vault.shim_rules, "w") as f:
            f.write("")
        # Without adopt: the same submission again decides (accepted now or
        # a replay of what the killed run committed, or fork evidence if the
        # killed run committed another hash).
        p = submit(vault, seq, chash, prev)
        assert p.returncode in (0, 3), (i, stall, p.returncode, p.stderr)
        # The anchor write and the old anchor's end come after COMMIT: a run
        # killed in them had stored its batch, so this is a replay.
        if stall != "C_Sign":
            assert b"replayed" in p.stderr, (i, stall, p.stderr)
        doc = json.loads(p.stdout)
        if p.returncode == 0:
            accepted.setdefault(seq, set()).add(doc["statement"]["checkpoint_hash"])
            prev = doc["statement"]["checkpoint_hash"]
        else:
            prev = doc["statement"]["accepted_checkpoint"]["checkpoint_hash"]
            accepted.setdefault(seq, set()).add(prev)
        seq += 1
    assert all(len(v) == 1 for v in accepted.values()), accepted
    code, st, _ = state(vault)
    assert code == 0 and st["state"] == "consistent", st


def _stalled(vault, pid, fn):
    try:
        with open(vault.shim_log) as f:
            return any(l.startswith(f"{pid} {fn} ") for l in f)
    except FileNotFoundError:
        return False
