# SPDX-License-Identifier: Apache-2.0
"""Batched enqueue signs on its own thread while the caller seals and
inserts (spool_enqueue's pipeline): every stored envelope must still be the
one signed for its item, in order, repeats inside a batch must meet the
stored first one (duplicate or conflict, never a second signature), and a
token failure in the middle of a group must leave only whole committed
groups behind."""
import hashlib
import json
import os
import sqlite3

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import lvtest

DOMAIN = b"attesto.local-vault.relay-envelope.v1\n"
GROUP = 256  # SPOOL_BATCH_GROUP


def jcs(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def batch(vault, items, env=None):
    lines = "".join(json.dumps(i) + "\n" for i in items)
    p = vault.run(["enqueue", "--jsonl", "-"], input=lines, env=env or vault.env, timeout=300)
    return p, [json.loads(line) for line in p.stdout.splitlines()]


def stored(vault):
    with sqlite3.connect(vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]) as c:
        return c.execute("SELECT id, source_ref, envelope, envelope_hash FROM items"
                         " ORDER BY id").fetchall()


def check_envelopes(vault, rows):
    pk = Ed25519PublicKey.from_public_bytes(
        bytes.fromhex(vault.run(["public-key", "--format", "hex"], check=0).stdout.strip()))
    for _, ref, body, ehash in rows:
        assert hashlib.sha256(body).hexdigest() == ehash
        env = json.loads(body)
        assert env["source_ref"] == ref
        sig = env.pop("local_signature")
        pk.verify(bytes.fromhex(sig["signature"]), DOMAIN + jcs(env))


def item(i, ref=None, payload=None):
    return {"stream_id": f"s{i % 7}", "source_ref": ref or f"r{i:04d}",
            "payload": payload if payload is not None else {"i": i}}


def test_pipelined_batch_signs_each_new_item_once_in_order(tmp_path):
    vault = lvtest.Vault(tmp_path)
    assert batch(vault, [item(0)])[0].returncode == 0  # r0000 stored before
    items = [item(i) for i in range(600)]
    items.insert(10, item(5))                          # repeat, same payload: duplicate
    items.insert(300, item(7, payload={"i": -7}))      # repeat, other payload: conflict
    items.insert(450, item(0))                         # stored before: duplicate
    p, res = batch(vault, items)
    assert p.returncode == 4, p.stderr                 # the conflict
    assert len(res) == len(items)
    status = [r["status"] for r in res]
    assert status.count("queued") == 599
    assert status.count("duplicate") == 3 and status.count("conflict") == 1
    assert res[10]["envelope_hash"] == res[5]["envelope_hash"]
    rows = stored(vault)
    assert [r[1] for r in rows] == [f"r{i:04d}" for i in range(600)]  # enqueue order
    by_ref = {r[1]: r[3] for r in rows}
    for it, r in zip(items, res):
        assert r["envelope_hash"] == by_ref[it["source_ref"]]
    check_envelopes(vault, rows)


def test_token_failure_mid_group_keeps_only_committed_groups(tmp_path):
    # The fault-injecting module (tests/shim), built with the tests.
    shim = os.environ.get("LV_SHIM") or os.path.join(lvtest.BUILD_DIR, "tests", "libp11shim.so")
    assert os.path.exists(shim), f"{shim}: the PKCS#11 shim is not built"
    vault = lvtest.Vault(tmp_path)
    assert batch(vault, [item(0, ref="warm")])[0].returncode == 0
    rules = tmp_path / "rules"
    # The 301st signature of the run fails: inside the second group.
    rules.write_text("C_Sign CKR_GENERAL_ERROR after=300 times=0\n")
    env = dict(vault.env, LV_SHIM_MODULE=vault.env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"],
               LV_SHIM_RULES=str(rules), ATTESTO_LOCAL_VAULT_PKCS11_MODULE=shim)
    p, res = batch(vault, [item(i) for i in range(3 * GROUP)], env=env)
    assert p.returncode != 0
    assert "C_Sign" in p.stderr
    # The first group was committed and reported; the failing one left nothing.
    assert len(res) == GROUP and all(r["status"] == "queued" for r in res)
    rows = stored(vault)
    assert [r[1] for r in rows] == ["warm"] + [f"r{i:04d}" for i in range(GROUP)]
    check_envelopes(vault, rows)
    # The rest goes in on a rerun, each item once.
    p, res = batch(vault, [item(i) for i in range(3 * GROUP)])
    assert p.returncode == 0, p.stderr
    assert [r["status"] for r in res].count("duplicate") == GROUP
    rows = stored(vault)
    assert len(rows) == 1 + 3 * GROUP
    check_envelopes(vault, rows)
