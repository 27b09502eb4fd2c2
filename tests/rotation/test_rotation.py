# SPDX-License-Identifier: Apache-2.0
"""Key rotation on a fresh SoftHSM token, a real spool and the reference
receiver over real TLS: items enqueued before and after a signing key
rotation and a DEK rotation all deliver and each verifies under its own kid;
`spool rekey` re-seals old rows in batches with progress and retires the old
DEK; `spool rewrap-kek` moves the DEKs under a new KEK; and the refusals."""
import json
import os
import sqlite3
import subprocess
import time

import lvtest
from relaylib import Receiver, drain_once, enqueue, event_id, relay_env, show, verify_envelope

SIGNING_B = "pkcs11:token=attesto;object=lv-signing-b;type=private"
KEK_2 = "pkcs11:token=attesto;object=lv-spool-kek-2;type=secret-key"


def public_keys(vault):
    return json.loads(vault.run(["public-key"], check=0).stdout)


def by_kid(keys):
    out = {keys["kid"]: keys["public_key_hex"]}
    out.update({k["kid"]: k["public_key_hex"] for k in keys.get("previous", [])})
    return out


def payload(vault, ref):
    p = vault.run(["show", event_id(ref), "--payload", "--json"], check=0)
    return json.loads(p.stdout)["payload"]


def deks(vault):
    return json.loads(vault.run(["spool", "deks", "--json"], check=0).stdout)["deks"]


def pkcs11_tool(vault, *args):
    with open(vault.env["ATTESTO_LOCAL_VAULT_PIN_FILE"]) as f:
        pin = f.read().strip()
    p = subprocess.run(["pkcs11-tool", "--module", vault.env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"],
                        "--login", "--pin", pin, *args], env=vault.env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_items_from_every_epoch_deliver_and_verify_under_their_own_kid(tmp_path, pki):
    v = lvtest.Vault(tmp_path / "v")
    key_a = public_keys(v)
    assert key_a["previous"] == []
    # Epoch A, DEK 1
    enqueue(v, "s1", "a1", payload={"epoch": "a", "n": 1})
    enqueue(v, "s2", "a2", payload={"epoch": "a", "n": 2})

    # Signing key rotation: a new key at a new URI, then the switch.
    p = lvtest.run(["--json", "keys", "init"],
                   env=dict(v.env, ATTESTO_LOCAL_VAULT_SIGNING_KEY=SIGNING_B), check=0)
    assert json.loads(p.stdout)["signing_key"]["created"] is True
    v.env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"] = SIGNING_B
    enqueue(v, "s1", "b1", payload={"epoch": "b", "n": 1})
    enqueue(v, "s2", "b2", payload={"epoch": "b", "n": 2})
    keys = public_keys(v)
    assert keys["kid"] != key_a["kid"]
    assert [k["kid"] for k in keys["previous"]] == [key_a["kid"]]
    assert keys["previous"][0]["public_key_hex"] == key_a["public_key_hex"]
    assert keys["previous"][0]["public_key_pem"] == key_a["public_key_pem"]

    # DEK rotation: new rows use the new DEK.
    r = json.loads(v.run(["spool", "rotate-dek", "--json"], check=0).stdout)
    assert r == {"current_dek": 2}
    enqueue(v, "s1", "c1", payload={"epoch": "b", "dek": 2})
    enqueue(v, "s3", "c2", payload={"epoch": "b", "dek": 2})
    assert [(d["id"], d["current"], d["rows"]) for d in deks(v)] == [(1, False, 4), (2, True, 2)]

    # The receiver knows both keys by kid (the JSON of public-key).
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(keys))
    rcv = Receiver(tmp_path / "rcv", pki, register=[("inst-test", f"@{keys_file}")])
    try:
        relay_env(v, rcv, pki)
        p, s = drain_once(v)
        assert p.returncode == 0, p.stderr
        assert s["delivered"] == 6 and s["remaining"] == 0
        events = {e["event_id"]: e for e in rcv.events()}
    finally:
        rcv.stop()
    kids = by_kid(keys)
    expect = {"a1": key_a["kid"], "a2": key_a["kid"], "b1": keys["kid"], "b2": keys["kid"],
              "c1": keys["kid"], "c2": keys["kid"]}
    other = {key_a["kid"]: keys["kid"], keys["kid"]: key_a["kid"]}
    for ref, kid in expect.items():
        body = events[event_id(ref)]["body"]
        env = json.loads(body)
        assert env["local_signature"]["kid"] == kid
        # independently (python-cryptography), under its own kid
        verify_envelope(body, kids[kid])
        path = tmp_path / f"{ref}.json"
        path.write_text(body)
        # verify picks the key by kid from the public-key JSON
        out = json.loads(v.run(["verify", str(path), "--public-key", str(keys_file), "--json"],
                               check=0).stdout)
        assert out["valid"] is True and out["kid"] == kid
        # and the other epoch's key alone does not verify it
        p = v.run(["verify", str(path), "--public-key", kids[other[kid]]])
        assert p.returncode == 1, p.stdout

    # rekey: the four rows of DEK 1 are re-sealed in batches of 3, with
    # progress, and DEK 1 retires.
    p = v.run(["spool", "rekey", "--batch", "3", "--json"], check=0)
    res = json.loads(p.stdout)
    assert res == {"rekeyed": 4, "unreadable": 0, "retired_deks": 1, "deks_left": 1}
    progress = [json.loads(l)["rekey_progress"] for l in p.stderr.splitlines()]
    assert progress[0] == {"done": 0, "total": 4} and progress[-1] == {"done": 4, "total": 4}
    assert len(progress) >= 3  # 0, then one per batch (3, 4)
    assert [(d["id"], d["rows"]) for d in deks(v)] == [(2, 6)]
    for ref, n in (("a1", 1), ("a2", 2), ("b1", 1)):
        assert payload(v, ref)["n"] == n
    # a second rekey has nothing to do
    res = json.loads(v.run(["spool", "rekey", "--json"], check=0).stdout)
    assert res["rekeyed"] == 0 and res["retired_deks"] == 0


def test_kek_rotation_rewraps_the_deks(tmp_path, pki):
    v = lvtest.Vault(tmp_path / "v")
    enqueue(v, "s1", "x1", payload={"n": 1})
    v.run(["spool", "rotate-dek"], check=0)
    enqueue(v, "s1", "x2", payload={"n": 2})
    lvtest.run(["keys", "init"], env=dict(v.env, ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY=KEK_2), check=0)
    before = sqlite3.connect(v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]).execute(
        "SELECT id, wrapped FROM deks ORDER BY id").fetchall()
    out = json.loads(v.run(["spool", "rewrap-kek", "--new-encryption-key", KEK_2, "--json"],
                           check=0).stdout)
    assert out == {"rewrapped_deks": 2}
    after = sqlite3.connect(v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]).execute(
        "SELECT id, wrapped FROM deks ORDER BY id").fetchall()
    assert [i for i, _ in after] == [1, 2]
    assert all(len(w) == 40 and w != bw for (_, w), (_, bw) in zip(after, before))
    # The old KEK no longer opens the spool: a key problem, exit 5.
    p = v.run(["show", event_id("x1"), "--payload"], check=5)
    assert "KEK" in p.stderr
    # With the new one everything reads, and new rows are sealed.
    v.env["ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY"] = KEK_2
    assert payload(v, "x1")["n"] == 1 and payload(v, "x2")["n"] == 2
    pkcs11_tool(v, "--delete-object", "--type", "secrkey", "--label", "lv-spool-kek")
    enqueue(v, "s1", "x3", payload={"n": 3})
    assert payload(v, "x3")["n"] == 3
    rcv = Receiver(tmp_path / "rcv", pki, register=[("inst-test", public_keys(v)["public_key_hex"])])
    try:
        relay_env(v, rcv, pki)
        p, s = drain_once(v)
        assert p.returncode == 0 and s["delivered"] == 3, p.stderr
        d = json.loads(v.run(["doctor", "--json"]).stdout)
        assert {c["name"]: c["status"] for c in d["checks"]}["dek"] == "pass"
    finally:
        rcv.stop()


def test_rewrap_refusals_leave_the_spool_as_it_was(tmp_path):
    v = lvtest.Vault(tmp_path / "v")
    enqueue(v, "s1", "x1")
    db = v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]
    snapshot = sqlite3.connect(db).execute("SELECT id, wrapped FROM deks").fetchall()
    p = v.run(["spool", "rewrap-kek"], check=2)
    assert "--new-encryption-key: required" in p.stderr
    p = v.run(["spool", "rewrap-kek", "--new-encryption-key", "00" * 32], check=2)
    assert "not a PKCS#11 URI" in p.stderr and "00" * 32 not in p.stderr
    p = v.run(["spool", "rewrap-kek", "--new-encryption-key",
               v.env["ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY"]], check=2)
    assert "names the current KEK" in p.stderr
    p = v.run(["spool", "rewrap-kek", "--new-encryption-key",
               "pkcs11:token=attesto;object=absent;type=secret-key"], check=5)
    assert "new KEK" in p.stderr and "absent" in p.stderr
    p = v.run(["spool", "rewrap-kek", "--new-encryption-key",
               "pkcs11:token=elsewhere;object=k;type=secret-key"], check=2)
    assert "names another token" in p.stderr
    # an extractable KEK is refused as the configured one would be
    pkcs11_tool(v, "--keygen", "--key-type", "AES:32", "--label", "lv-weak", "--id", "0b",
                "--sensitive", "--private", "--extractable", "--usage-wrap")
    p = v.run(["spool", "rewrap-kek", "--new-encryption-key",
               "pkcs11:token=attesto;object=lv-weak;type=secret-key"], check=5)
    assert "CKA_EXTRACTABLE is TRUE" in p.stderr
    assert sqlite3.connect(db).execute("SELECT id, wrapped FROM deks").fetchall() == snapshot
    assert payload(v, "x1") == {"ref": "x1", "n": 1}


def test_a_new_key_under_an_old_kid_is_refused(tmp_path):
    v = lvtest.Vault(tmp_path / "v")
    v.env["ATTESTO_LOCAL_VAULT_KEY_ID"] = "kid-fixed"
    enqueue(v, "s1", "k1")
    lvtest.run(["keys", "init"], env=dict(v.env, ATTESTO_LOCAL_VAULT_SIGNING_KEY=SIGNING_B),
               check=0)
    v.env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"] = SIGNING_B
    p = enqueue(v, "s1", "k2", check=2)
    assert "--key-id kid-fixed" in p.stderr and "new kid" in p.stderr
    # nothing was written
    assert v.run(["show", event_id("k2")]).returncode == 2
    v.env["ATTESTO_LOCAL_VAULT_KEY_ID"] = "kid-b"
    enqueue(v, "s1", "k2")
    keys = public_keys(v)
    assert keys["kid"] == "kid-b" and [k["kid"] for k in keys["previous"]] == ["kid-fixed"]


def test_dek_slots_are_bounded_and_rekey_frees_them(tmp_path):
    v = lvtest.Vault(tmp_path / "v")
    enqueue(v, "s1", "r0")
    for i in range(7):
        v.run(["spool", "rotate-dek"], check=0)
    p = v.run(["spool", "rotate-dek"], check=2)
    assert "run `spool rekey` first" in p.stderr
    assert len(deks(v)) == 8
    res = json.loads(v.run(["spool", "rekey", "--json"], check=0).stdout)
    assert res["rekeyed"] == 1 and res["retired_deks"] == 7 and res["deks_left"] == 1
    v.run(["spool", "rotate-dek"], check=0)
    assert payload(v, "r0") == {"ref": "r0", "n": 1}


def test_a_spool_from_before_rotation_is_migrated(tmp_path):
    """A schema-1 spool (wrapped DEK in meta, no DEK ids) opens, migrates and
    keeps every payload readable."""
    v = lvtest.Vault(tmp_path / "v")
    enqueue(v, "s1", "old1", payload={"n": 11})
    db = v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]
    c = sqlite3.connect(db)
    (wrapped,) = c.execute("SELECT wrapped FROM deks WHERE id = 1").fetchone()
    # Back to the schema-1 layout (and without what schema 3 added, the quota's count).
    c.executescript("DROP TRIGGER items_held_ins; DROP TRIGGER items_held_del;"
                    "DROP TRIGGER items_held_upd; DELETE FROM counts WHERE name = 'held_bytes';"
                    "DROP INDEX items_dek; ALTER TABLE items DROP COLUMN dek_id;"
                    "DROP TABLE deks; DROP TABLE signing_keys;"
                    "DELETE FROM meta WHERE key = 'current_dek'; PRAGMA user_version = 1;")
    c.execute("INSERT INTO meta(key, value) VALUES ('wrapped_dek', ?)", (wrapped,))
    c.commit()
    c.close()
    assert payload(v, "old1") == {"n": 11}
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 4
    assert c.execute("SELECT id, wrapped FROM deks").fetchall() == [(1, wrapped)]
    # Schema 4 names the wrap algorithm of the DEKs made before it, and the
    # mechanism SoftHSM made them with (0x210A).
    assert c.execute("SELECT wrap_alg, wrap_mechanism FROM deks").fetchall() == [("rfc5649", 0x210A)]
    assert c.execute("SELECT count(*) FROM meta WHERE key = 'wrapped_dek'").fetchone()[0] == 0
    assert c.execute("SELECT dek_id FROM items").fetchall() == [(1,)]


def test_usage_errors(tmp_path):
    v = lvtest.Vault(tmp_path / "v")
    assert "missing subcommand" in v.run(["spool"], check=2).stderr
    assert "unknown subcommand" in v.run(["spool", "shred"], check=2).stderr
    assert "--batch: 0" in v.run(["spool", "rekey", "--batch", "0"], check=2).stderr
    assert "only for rekey" in v.run(["spool", "deks", "--batch", "5"], check=2).stderr
    assert "unexpected argument" in v.run(["spool", "deks", "extra"], check=2).stderr
    assert not os.path.exists(v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"])


def enqueue_opt_in(vault, items):
    """Items with the payload relayed (opt-in): their envelopes are sealed
    too, so delivering them decrypts rows under their own DEK."""
    lines = "".join(json.dumps({"stream_id": s, "source_ref": r, "payload": p}) + "\n"
                    for s, r, p in items)
    vault.run(["enqueue", "--jsonl", "-", "--include-payload"], input=lines, check=0)


def receipted(vault):
    return json.loads(vault.run(["status", "--json"], check=0).stdout)["counts"]["receipted"]


def test_rotations_under_a_running_drain_loop(tmp_path, pki):
    """drain-loop keeps running across a signing key switch and two DEK
    rotations made by other processes: rows sealed under DEKs 1, 2 and 3
    (one of them made after the service opened the spool) are all opened,
    delivered with their payload, and each envelope verifies under its kid."""
    v = lvtest.Vault(tmp_path / "v")
    key_a = public_keys(v)
    enqueue_opt_in(v, [("s1", "a1", {"e": "a", "n": 1}), ("s2", "a2", {"e": "a", "n": 2})])
    lvtest.run(["keys", "init"], env=dict(v.env, ATTESTO_LOCAL_VAULT_SIGNING_KEY=SIGNING_B),
               check=0)
    v.env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"] = SIGNING_B
    assert json.loads(v.run(["spool", "rotate-dek", "--json"], check=0).stdout) == \
        {"current_dek": 2}
    enqueue_opt_in(v, [("s1", "b1", {"e": "b", "n": 1}), ("s3", "b2", {"e": "b", "n": 2})])
    keys = public_keys(v)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(keys))
    rcv = Receiver(tmp_path / "rcv", pki, register=[("inst-test", f"@{keys_file}")])
    relay_env(v, rcv, pki)
    loop = subprocess.Popen([lvtest.LV_BIN, "drain-loop", "--metrics-file", "none",
                             "--max-in-flight", "4"], env=v.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: receipted(v) == 4, 60, "the first four delivered", loop)
        # A DEK made while the service runs: its rows are opened too.
        assert json.loads(v.run(["spool", "rotate-dek", "--json"], check=0).stdout) == \
            {"current_dek": 3}
        enqueue_opt_in(v, [("s1", "c1", {"e": "b", "n": 3}), ("s4", "c2", {"e": "b", "n": 4})])
        assert [(d["id"], d["rows"]) for d in deks(v)] == [(1, 2), (2, 2), (3, 2)]
        wait_until(lambda: receipted(v) == 6, 60, "all six delivered", loop)
    finally:
        loop.terminate()
        _, err = loop.communicate(timeout=30)
        events = {e["event_id"]: e for e in rcv.events()}
        rcv.stop()
    assert loop.returncode == 0, err
    counts = json.loads(v.run(["status", "--json"], check=0).stdout)["counts"]
    assert counts["quarantined"] == 0 and counts["dead_letter"] == 0, counts
    kids = by_kid(keys)
    want = {"a1": (key_a["kid"], {"e": "a", "n": 1}), "a2": (key_a["kid"], {"e": "a", "n": 2}),
            "b1": (keys["kid"], {"e": "b", "n": 1}), "b2": (keys["kid"], {"e": "b", "n": 2}),
            "c1": (keys["kid"], {"e": "b", "n": 3}), "c2": (keys["kid"], {"e": "b", "n": 4})}
    for ref, (kid, pl) in want.items():
        body = events[event_id(ref)]["body"]
        env = json.loads(body)
        assert env["local_signature"]["kid"] == kid, ref
        assert env["payload"] == pl, ref
        verify_envelope(body, kids[kid])


def wait_until(cond, timeout, what, proc):
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"drain-loop exited: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)
