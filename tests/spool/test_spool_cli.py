# SPDX-License-Identifier: Apache-2.0
"""The spool verbs against a fresh SoftHSM token and a real SQLite spool:
enqueue idempotency and drift, the envelope checked with python3-cryptography,
confidentiality at rest, quarantine of tampered rows, crash safety of batches,
lease recovery, bad input, and the operator verbs."""
import copy
import hashlib
import json
import os
import pty
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import lvtest
from lvtest import LV_BIN, Vault

sys.path.insert(0, os.path.join(lvtest.SOURCE_DIR, "tests", "relay"))
import relaylib  # noqa: E402  (the relay's PKI and reference receiver)

SPOOL_TOOL = os.environ.get("LV_SPOOL_TOOL",
                            os.path.join(os.environ.get("LV_BUILD_DIR", ""), "tests", "spool-tool"))
DOMAIN = b"attesto.local-vault.relay-envelope.v1\n"


@pytest.fixture(scope="module")
def token_vault(tmp_path_factory):
    return Vault(tmp_path_factory.mktemp("token"))


@pytest.fixture(scope="module")
def seed_spool(token_vault, tmp_path_factory):
    """A spool holding one item ("existing"), made once and copied by the
    tests that only need something already stored."""
    t = copy.copy(token_vault)
    t.env = dict(token_vault.env)
    path = str(tmp_path_factory.mktemp("seed") / "spool.sqlite3")
    t.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = path
    t.run(["enqueue", "--stream-id", "str_1", "--source-ref", "existing", "--payload-file", "-"],
          input='{"n":0}', check=0)
    assert not os.path.exists(path + "-wal")  # checkpointed into the main file at exit
    return path


def seeded(v, seed_spool):
    shutil.copy2(seed_spool, spool_path(v))


@pytest.fixture
def v(token_vault, tmp_path):
    """The module's token (keys made once) with a spool of this test's own."""
    t = copy.copy(token_vault)
    t.dir = str(tmp_path)
    t.env = dict(token_vault.env)
    t.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = str(tmp_path / "spool.sqlite3")
    return t


def spool_path(v):
    return v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]


def enqueue(v, ref, payload, stream="str_1", check=0, extra=()):
    path = os.path.join(v.dir, "payload.json")
    with open(path, "w") as f:
        f.write(payload if isinstance(payload, str) else json.dumps(payload))
    p = v.run(["enqueue", "--stream-id", stream, "--source-ref", ref, "--payload-file", path,
               *extra], check=check)
    return json.loads(p.stdout) if p.stdout.strip() else None


def batch(v, lines, check=0, name="batch.jsonl"):
    path = os.path.join(v.dir, name)
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    p = v.run(["enqueue", "--jsonl", path], check=check)
    return p, [json.loads(line) for line in p.stdout.splitlines()]


def tool(v, *args, check=True):
    p = subprocess.run([SPOOL_TOOL, *args], env=v.env, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def db(v):
    return sqlite3.connect(spool_path(v))


def rows(v, sql, *params):
    with db(v) as c:
        return c.execute(sql, params).fetchall()


def jcs(obj):
    """RFC 8785 for what envelopes hold (ASCII strings, integers)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def public_key(v):
    return bytes.fromhex(v.run(["public-key", "--format", "hex"], check=0).stdout.strip())


def status(v):
    return json.loads(v.run(["status", "--json"], check=0).stdout)


def show(v, event_id, *extra, check=0):
    p = v.run(["show", event_id, "--json", *extra], check=check)
    return json.loads(p.stdout) if check == 0 else p


# ---------- idempotency and drift ----------

def test_same_item_twice_is_one_row_duplicate_same_hash(v):
    a = enqueue(v, "ref-1", {"n": 56, "s": "x"})
    b = enqueue(v, "ref-1", '{ "s": "x", "n": 5.6e1 }')
    assert a["status"] == "queued" and b["status"] == "duplicate"
    assert a["event_id"] == b["event_id"] == "local-vault:inst-test:ref-1"
    assert a["envelope_hash"] == b["envelope_hash"]
    assert rows(v, "SELECT count(*) FROM items") == [(1,)]


def test_changed_payload_is_conflict_exit_4_original_untouched(v):
    a = enqueue(v, "ref-1", {"n": 1})
    before = rows(v, "SELECT * FROM items")
    p = v.run(["enqueue", "--stream-id", "str_1", "--source-ref", "ref-1", "--payload-file", "-"],
              input='{"n":2}', check=4)
    res = json.loads(p.stdout)
    assert res["status"] == "conflict" and res["envelope_hash"] == a["envelope_hash"]
    assert "conflict" in p.stderr
    assert rows(v, "SELECT * FROM items") == before
    assert rows(v, "SELECT reason, stream_id, source_ref FROM conflicts") == [
        ("payload_differs", "str_1", "ref-1")]
    # Another event type, and the same source_ref in another stream, drift too.
    enqueue(v, "ref-1", {"n": 1}, extra=("--event-type", "other.type"), check=4)
    enqueue(v, "ref-1", {"n": 1}, stream="str_2", check=4)
    assert rows(v, "SELECT * FROM items") == before
    assert status(v)["conflicts"] == 3
    assert show(v, a["event_id"])["conflicts"] == 3


def test_batch_reports_each_item_and_exit_4_on_conflict(v):
    enqueue(v, "r0", {"n": 0})
    p, res = batch(v, [{"stream_id": "s", "source_ref": "r1", "payload": {"n": 1}},
                       {"stream_id": "str_1", "source_ref": "r0", "payload": {"n": 0}},
                       {"stream_id": "str_1", "source_ref": "r0", "payload": {"n": 9}},
                       {"stream_id": "s", "source_ref": "r1", "payload": {"n": 1}},
                       {"stream_id": "s", "source_ref": "r2", "event_type": "x.y",
                        "payload": {"n": 2}}], check=4)
    assert [r["status"] for r in res] == ["queued", "duplicate", "conflict", "duplicate", "queued"]
    assert res[0]["envelope_hash"] == res[3]["envelope_hash"]
    assert rows(v, "SELECT count(*) FROM items") == [(3,)]
    assert rows(v, "SELECT event_type FROM items WHERE source_ref = 'r2'") == [("x.y",)]


# ---------- the envelope ----------

def test_envelope_signature_verifies_with_python_cryptography(v):
    res = enqueue(v, "ref-sig", {"b": [1, 2], "a": {"z": "é", "y": -3}})
    (body, stored_hash, payload_hash), = rows(
        v, "SELECT envelope, envelope_hash, payload_hash FROM items")
    assert hashlib.sha256(body).hexdigest() == stored_hash == res["envelope_hash"]
    env = json.loads(body)
    assert jcs(env) == body  # the body bytes are the canonical form
    assert env["event_id"] == "local-vault:inst-test:ref-sig"
    assert env["event_type"] == "source.attestation"
    assert env["envelope_version"] == 1 and env["stream_id"] == "str_1"
    assert env["payload_hash"] == payload_hash == hashlib.sha256(
        jcs({"a": {"y": -3, "z": "é"}, "b": [1, 2]})).hexdigest()
    assert "payload" not in env  # only commitments leave by default
    sig = env.pop("local_signature")
    assert sig["alg"] == "Ed25519" and len(sig["signature"]) == 128
    pk = public_key(v)
    assert sig["kid"] == "lv-" + hashlib.sha256(pk).hexdigest()[:16]
    Ed25519PublicKey.from_public_bytes(pk).verify(bytes.fromhex(sig["signature"]),
                                                  DOMAIN + jcs(env))
    env["spooled_at"] = "2000-01-01T00:00:00Z"
    with pytest.raises(Exception):
        Ed25519PublicKey.from_public_bytes(pk).verify(bytes.fromhex(sig["signature"]),
                                                      DOMAIN + jcs(env))


def test_opt_in_payload_is_signed_and_sealed(v):
    marker = "MARKER-OPT-IN-7f3a"
    res = enqueue(v, "ref-opt", {"secret": marker}, extra=("--include-payload",))
    (sealed, blob), = rows(v, "SELECT envelope_sealed, envelope FROM items")
    assert sealed == 1 and marker.encode() not in blob
    shown = show(v, res["event_id"])
    env = shown["envelope"]
    assert env["payload"] == {"secret": marker}
    body = jcs(env)
    assert hashlib.sha256(body).hexdigest() == res["envelope_hash"]
    sig = env.pop("local_signature")
    Ed25519PublicKey.from_public_bytes(public_key(v)).verify(bytes.fromhex(sig["signature"]),
                                                             DOMAIN + jcs(env))


def test_verify_verb_accepts_the_body_and_rejects_changes(v):
    enqueue(v, "ref-v", {"n": 1})
    (body,), = rows(v, "SELECT envelope FROM items")
    pk_hex = public_key(v).hex()
    f = os.path.join(v.dir, "env.json")
    open(f, "wb").write(body + b"\n")
    out = json.loads(v.run(["verify", f, "--public-key", pk_hex], check=0).stdout)
    assert out["valid"] is True and out["kind"] == "relay_envelope"
    assert out["envelope_hash"] == hashlib.sha256(body).hexdigest()
    pem = os.path.join(v.dir, "pk.pem")
    open(pem, "w").write(v.run(["public-key", "--format", "pem"], check=0).stdout)
    v.run(["verify", "-", "--public-key", pem], input=body.decode(), check=0)
    # A signed member changed, still well-formed: the signature fails (exit 1).
    env = json.loads(body)
    env["spooled_at"] = "2000-01-01T00:00:00Z"
    open(f, "wb").write(jcs(env))
    p = v.run(["verify", f, "--public-key", pk_hex], check=1)
    assert "signature does not verify" in p.stderr
    # Not canonical (pretty-printed): refused as input (exit 2).
    open(f, "w").write(json.dumps(json.loads(body), indent=1))
    p = v.run(["verify", f, "--public-key", pk_hex], check=2)
    assert "canonical" in p.stderr
    # Another key.
    other = "ab" * 32
    v.run(["verify", "-", "--public-key", other], input=body.decode(), check=1)
    v.run(["verify", "-", "--public-key", "not-a-key"], input=body.decode(), check=2)


# ---------- confidentiality at rest ----------

def test_marker_absent_from_main_wal_and_shm(v):
    marker = "MARKER-5d1e9c-SECRET"
    enqueue(v, "warm", {"n": 0})
    # Another connection keeps the WAL from being checkpointed away on exit,
    # so the -wal file holds the frames this enqueue wrote.
    holder = db(v)
    holder.execute("SELECT count(*) FROM items").fetchall()
    enqueue(v, "ref-m", {"note": marker, "nested": {"x": marker}})
    batch(v, [{"stream_id": "s", "source_ref": f"b{i}", "payload": {"m": marker, "i": i}}
              for i in range(50)])
    base = spool_path(v)
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        path = base + suffix
        assert os.path.exists(path), path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        data = open(path, "rb").read()
        sizes[suffix] = len(data)
        assert marker.encode() not in data, path
    assert sizes["-wal"] > 0
    holder.close()
    # The payload is still there, on the token's side.
    p = show(v, "local-vault:inst-test:ref-m", "--payload")
    assert p["payload"] == {"nested": {"x": marker}, "note": marker}


# ---------- quarantine ----------

def test_tampered_rows_are_quarantined_and_never_relayed(v):
    for ref, stream in (("altered", "s1"), ("donor", "s2"), ("copied", "s3"), ("good", "s4")):
        enqueue(v, ref, {"ref": ref}, stream=stream)
    with db(v) as c:
        (blob,), = c.execute("SELECT payload FROM items WHERE source_ref = 'altered'").fetchall()
        b = bytearray(blob)
        b[len(b) // 2] ^= 0x40
        c.execute("UPDATE items SET payload = ? WHERE source_ref = 'altered'", (bytes(b),))
        c.execute("UPDATE items SET payload = (SELECT payload FROM items WHERE source_ref = "
                  "'donor') WHERE source_ref = 'copied'")
    # Reading the payload finds the altered row and quarantines it.
    p = show(v, "local-vault:inst-test:altered", "--payload", check=1)
    assert "quarantined" in p.stderr and "row_decrypt_failed" in p.stderr
    # The drain's lease skips the copied row and quarantines it too.
    leased = tool(v, "lease", "drain-test", "60000", "10")
    assert sorted(x["event_id"] for x in leased) == ["local-vault:inst-test:donor",
                                                     "local-vault:inst-test:good"]
    for x in leased:
        assert x["body_hash"] == x["envelope_hash"]
    st = status(v)
    assert st["counts"]["quarantined"] == 2
    reasons = {q["event_id"]: q["reason"] for q in st["quarantined_items"]}
    assert set(reasons) == {"local-vault:inst-test:altered", "local-vault:inst-test:copied"}
    assert all("row_decrypt_failed" in r for r in reasons.values())
    shown = show(v, "local-vault:inst-test:copied")
    assert shown["state"] == "quarantined" and "row_decrypt_failed" in shown["last_error"]
    # Never leased later, whoever asks.
    for x in leased:
        tool(v, "receipt", str(x["id"]), "drain-test", "{}")
    assert tool(v, "lease", "other", "60000", "10") == []
    human = v.run(["status"], check=0).stdout
    assert "quarantined" in human


def flip_payload_byte(v, source_ref):
    with db(v) as c:
        (blob,), = c.execute("SELECT payload FROM items WHERE source_ref = ?",
                             (source_ref,)).fetchall()
        b = bytearray(blob)
        b[len(b) // 2] ^= 0x40
        c.execute("UPDATE items SET payload = ? WHERE source_ref = ?", (bytes(b), source_ref))


def test_tampered_rows_never_reach_the_receiver(v, tmp_path):
    """The real drain over real TLS to the reference receiver: the tampered
    rows are quarantined, the others delivered, the stream goes on."""
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pki = relaylib.PKI(pki_dir)
    receiver = relaylib.Receiver(tmp_path / "receiver", pki,
                                 register=[("inst-test", relaylib.public_key_hex(v))])
    try:
        relaylib.relay_env(v, receiver, pki)
        for ref, stream in (("altered", "s1"), ("after-altered", "s1"), ("donor", "s2"),
                            ("copied", "s3"), ("good", "s4")):
            enqueue(v, ref, {"ref": ref}, stream=stream)
        flip_payload_byte(v, "altered")
        with db(v) as c:
            c.execute("UPDATE items SET payload = (SELECT payload FROM items WHERE source_ref ="
                      " 'donor') WHERE source_ref = 'copied'")
        p, summary = relaylib.drain_once(v)
        assert p.returncode == 0, p.stderr
        delivered = sorted(e["event_id"] for e in receiver.events())
        assert delivered == ["local-vault:inst-test:after-altered", "local-vault:inst-test:donor",
                             "local-vault:inst-test:good"]
        st = status(v)
        assert st["counts"]["quarantined"] == 2 and st["counts"]["receipted"] == 3
        # A second pass finds nothing to send.
        relaylib.drain_once(v)
        assert len(receiver.events()) == 3
        assert show(v, "local-vault:inst-test:altered")["state"] == "quarantined"
    finally:
        receiver.stop()


# ---------- crash safety ----------

def test_kill_9_during_batch_leaves_whole_items_and_rerun_completes(v):
    n = 1200
    lines = [{"stream_id": f"s{i % 32}", "source_ref": f"k{i}", "payload": {"i": i, "m": "x"}}
             for i in range(n)]
    path = os.path.join(v.dir, "big.jsonl")
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    # The killed run never reaches LeakSanitizer's exit check, so it may use
    # fast stack unwinding (slow unwinding costs ~20 ms per item under ASan);
    # memory errors are still caught. The completing run keeps every check.
    env = dict(v.env)
    if "LSAN_OPTIONS" in env:
        env["LSAN_OPTIONS"] = env["LSAN_OPTIONS"].replace("fast_unwind_on_malloc=0",
                                                          "fast_unwind_on_malloc=1")
    killed_err = open(os.path.join(v.dir, "killed.stderr"), "w+")
    proc = subprocess.Popen([LV_BIN, "enqueue", "--jsonl", path], env=env,
                            stdout=subprocess.PIPE, stderr=killed_err, text=True)
    seen = 0
    for _ in proc.stdout:
        seen += 1
        if seen >= 2 * 256:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # stderr was not a terminal: no progress bar there.
    killed_err.seek(0)
    assert killed_err.read() == ""
    stored = rows(v, "SELECT source_ref, envelope, envelope_hash, payload_hash, payload "
                     "FROM items ORDER BY id")
    # Only whole groups were committed: everything printed, nothing torn.
    assert seen <= len(stored) < n
    assert len(stored) % 256 == 0
    for ref, body, ehash, phash, blob in stored:
        assert hashlib.sha256(body).hexdigest() == ehash
        env = json.loads(body)
        i = int(ref[1:])
        assert env["payload_hash"] == phash == hashlib.sha256(jcs({"i": i, "m": "x"})).hexdigest()
        assert len(blob) == 1 + 12 + len(jcs({"i": i, "m": "x"})) + 16
    assert [r[0] for r in stored] == [f"k{i}" for i in range(len(stored))]
    before = {r[0]: r[2] for r in stored}
    # The completing run has a terminal on stderr: it shows its progress.
    master, slave = pty.openpty()
    p = subprocess.Popen([LV_BIN, "enqueue", "--jsonl", path], env=v.env,
                         stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    out, _ = p.communicate(timeout=600)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    assert p.returncode == 0, tty
    assert f"\renqueue: {n}/{n} items (100%)".encode() in tty, tty
    assert b"\renqueue: 256/" in tty
    res = [json.loads(line) for line in out.splitlines()]
    assert len(res) == n
    k = len(stored)
    assert all(r["status"] == "duplicate" for r in res[:k])
    assert all(r["status"] == "queued" for r in res[k:])
    assert all(res[i]["envelope_hash"] == before[f"k{i}"] for i in range(k))
    assert rows(v, "SELECT count(*) FROM items") == [(n,)]
    assert status(v)["counts"]["queued"] == n


# ---------- leases ----------

def test_expired_lease_returns_to_queued_with_attempts_kept(v):
    enqueue(v, "ref-l", {"n": 1})
    (x,) = tool(v, "lease", "drain-a", "60000", "10")
    assert x["attempts"] == 0
    # While a lease holds, nobody else gets the item.
    assert tool(v, "lease", "drain-b", "60000", "10") == []
    item = show(v, "local-vault:inst-test:ref-l")
    assert item["state"] == "relaying" and item["lease"]["owner"] == "drain-a"
    tool(v, "retry", str(x["id"]), "drain-a", "http_503", "0")
    # A lease of 1 ms stands for a drain that crashed mid-request.
    (x,) = tool(v, "lease", "drain-a", "1", "10")
    assert x["attempts"] == 1
    time.sleep(0.05)
    assert rows(v, "SELECT state, lease_owner, attempts FROM items") == [
        ("relaying", "drain-a", 1)]
    # The next start of any verb returns the expired lease.
    st = status(v)
    assert st["counts"]["queued"] == 1 and st["counts"]["relaying"] == 0
    item = show(v, "local-vault:inst-test:ref-l")
    assert item["state"] == "queued" and item["attempts"] == 1 and item["lease"] is None
    assert item["last_error"] == "http_503"
    # The crashed owner's late outcome is refused; a new lease carries the count.
    p = subprocess.run([SPOOL_TOOL, "receipt", str(x["id"]), "drain-a", "{}"], env=v.env,
                       capture_output=True, text=True)
    assert p.returncode != 0 and "lease not held" in p.stderr
    (z,) = tool(v, "lease", "drain-c", "60000", "10")
    assert z["attempts"] == 1


# ---------- bad input ----------

BIG = "x" * (1024 * 1024 + 10)
BAD_LINES = [
    ("missing_stream_id", '{"source_ref":"r","payload":{}}', "stream_id: missing"),
    ("missing_source_ref", '{"stream_id":"s","payload":{}}', "source_ref: missing"),
    ("missing_payload", '{"stream_id":"s","source_ref":"r"}', "payload: missing"),
    ("payload_over_1_mib", '{"stream_id":"s","source_ref":"r","payload":{"x":"%s"}}' % BIG,
     "payload:"),
    ("forbidden_character", '{"stream_id":"s 1","source_ref":"r","payload":{}}',
     "stream_id: forbidden character"),
    ("identifier_over_128", '{"stream_id":"s","source_ref":"%s","payload":{}}' % ("r" * 129),
     "source_ref: longer than 128 bytes"),
    ("non_object_payload", '{"stream_id":"s","source_ref":"r","payload":[1,2]}',
     "payload: must be a JSON object"),
    ("truncated_line", '{"stream_id":"s","source_ref":"r","payload":{"a":1',
     "payload: truncated JSON"),
    ("non_integral_number", '{"stream_id":"s","source_ref":"r","payload":{"score":0.87}}',
     "payload.score:"),
    ("not_an_object", '["s","r"]', "not a JSON object"),
    ("unknown_member", '{"stream_id":"s","source_ref":"r","payload":{},"extra":1}',
     "extra: unknown member"),
    ("string_expected", '{"stream_id":5,"source_ref":"r","payload":{}}',
     "stream_id: must be a string"),
]


@pytest.mark.parametrize("name,line,needle", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_batch_line_exit_2_names_line_and_field_nothing_written(v, seed_spool, name, line,
                                                                    needle):
    seeded(v, seed_spool)
    before = rows(v, "SELECT * FROM items"), rows(v, "SELECT * FROM conflicts")
    p, res = batch(v, ['{"stream_id":"s","source_ref":"ok-1","payload":{}}', line,
                       '{"stream_id":"s","source_ref":"ok-2","payload":{}}'], check=2)
    assert res == []
    err = p.stderr.strip()
    assert "\n" not in err, err
    assert err.startswith("enqueue: line 2: "), err
    assert needle in err, err
    assert (rows(v, "SELECT * FROM items"), rows(v, "SELECT * FROM conflicts")) == before


def test_bad_first_batch_creates_no_spool(v):
    p, _ = batch(v, ['{"stream_id":"s","source_ref":"r","payload":{"x":1.5}}'], check=2)
    assert "line 1: payload.x:" in p.stderr
    assert not os.path.exists(spool_path(v))


BAD_SINGLE = [
    ("forbidden_character", ["--stream-id", "a/b c", "--source-ref", "r"], None,
     "stream_id: forbidden character"),
    ("identifier_over_128", ["--stream-id", "s", "--source-ref", "r" * 129], None,
     "source_ref: longer than 128 bytes"),
    ("bad_event_type", ["--stream-id", "s", "--source-ref", "r", "--event-type", "a b"], None,
     "event_type:"),
    ("non_object_payload", ["--stream-id", "s", "--source-ref", "r"], "42",
     "payload: must be a JSON object"),
    ("non_integral_number", ["--stream-id", "s", "--source-ref", "r"], '{"a":{"b":1e-3}}',
     "payload.a.b:"),
    ("truncated_payload", ["--stream-id", "s", "--source-ref", "r"], '{"a":', "payload"),
    ("payload_over_1_mib", ["--stream-id", "s", "--source-ref", "r"], '{"x":"%s"}' % BIG,
     "payload:"),
    ("duplicate_key", ["--stream-id", "s", "--source-ref", "r"], '{"a":1,"a":2}', "payload"),
    ("missing_source_ref", ["--stream-id", "s"], None, "source_ref: missing"),
]


@pytest.mark.parametrize("name,args,payload,needle", BAD_SINGLE, ids=[b[0] for b in BAD_SINGLE])
def test_bad_single_item_exit_2_nothing_written(v, seed_spool, name, args, payload, needle):
    seeded(v, seed_spool)
    before = rows(v, "SELECT * FROM items")
    extra = ["--payload-file", "-"] if payload is not None else []
    p = v.run(["enqueue", *args, *extra], input=payload, check=2)
    err = p.stderr.strip()
    assert "\n" not in err and needle in err, err
    assert rows(v, "SELECT * FROM items") == before


# ---------- operator verbs ----------

def test_status_list_show_dead_letter_requeue_purge(v):
    for i in range(3):
        enqueue(v, f"a{i}", {"i": i}, stream="sa")
    enqueue(v, "b0", {"i": 0}, stream="sb")
    leased = {x["event_id"]: x for x in tool(v, "lease", "w", "60000", "10")}
    assert set(leased) == {"local-vault:inst-test:a0", "local-vault:inst-test:b0"}
    tool(v, "dead", str(leased["local-vault:inst-test:a0"]["id"]), "w", "receiver_conflict")
    tool(v, "receipt", str(leased["local-vault:inst-test:b0"]["id"]), "w",
         '{"event_id":"local-vault:inst-test:b0","seq_no":7}')
    st = status(v)
    assert st["counts"] == {"queued": 2, "relaying": 0, "receipted": 1, "dead_letter": 1,
                            "quarantined": 0}
    assert st["oldest_queued_at"] is not None and st["oldest_queued_age_s"] >= 0
    assert "receiver_conflict" in st["last_error"]

    lines = v.run(["list", "--state", "queued", "--json"], check=0).stdout.splitlines()
    assert [json.loads(x)["source_ref"] for x in lines] == ["a1", "a2"]
    lines = v.run(["list", "--stream-id", "sa", "--limit", "2"], check=0).stdout.splitlines()
    assert [json.loads(x)["source_ref"] for x in lines] == ["a0", "a1"]
    after = json.loads(lines[-1])["seq"]
    lines = v.run(["list", "--stream-id", "sa", "--after", str(after)], check=0).stdout
    assert [json.loads(x)["source_ref"] for x in lines.splitlines()] == ["a2"]
    v.run(["list", "--state", "bogus"], check=2)
    v.run(["list", "--limit", "0"], check=2)

    b0 = show(v, "local-vault:inst-test:b0")
    assert b0["state"] == "receipted" and b0["attempts"] == 1
    assert b0["receipt"] == {"event_id": "local-vault:inst-test:b0", "seq_no": 7}
    assert b0["envelope"]["source_ref"] == "b0"
    p = show(v, "local-vault:inst-test:nope", check=2)
    assert "no such item" in p.stderr

    dl = v.run(["dead-letter", "list"], check=0).stdout.splitlines()
    assert [json.loads(x)["event_id"] for x in dl] == ["local-vault:inst-test:a0"]
    assert json.loads(dl[0])["last_error"] == "receiver_conflict"
    p = v.run(["dead-letter", "requeue", "local-vault:inst-test:a1"], check=2)
    assert "only dead_letter" in p.stderr
    assert json.loads(v.run(["dead-letter", "requeue", "--all"], check=0).stdout) == {
        "requeued": 1}
    a0 = show(v, "local-vault:inst-test:a0")
    assert a0["state"] == "queued" and a0["attempts"] == 0
    (x,) = tool(v, "lease", "w", "60000", "10")
    assert x["event_id"] == "local-vault:inst-test:a0"  # its stream's head again

    v.run(["purge"], check=2)
    v.run(["purge", "--receipted-before", "yesterday"], check=2)
    assert json.loads(v.run(["purge", "--receipted-before", "2000-01-01"], check=0).stdout) == {
        "purged": 0}
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    assert json.loads(v.run(["purge", "--receipted-before", tomorrow], check=0).stdout) == {
        "purged": 1}
    assert status(v)["counts"]["receipted"] == 0


def test_status_without_spool_and_without_token_pin(v, tmp_path):
    p = v.run(["status"], check=1)
    assert "does not exist" in p.stderr
    enqueue(v, "r", {"n": 1})
    # Reading verbs do not need the token: no PIN file is needed.
    env = dict(v.env)
    env["ATTESTO_LOCAL_VAULT_PIN_FILE"] = str(tmp_path / "no-such-pin")
    from lvtest import run
    assert json.loads(run(["status", "--json"], env=env, check=0).stdout)["counts"]["queued"] == 1
    run(["show", "local-vault:inst-test:r"], env=env, check=0)
    # Decrypting does.
    run(["show", "local-vault:inst-test:r", "--payload"], env=env, check=5)


def test_spool_of_another_installation_is_refused(v):
    enqueue(v, "r", {"n": 1})
    env = dict(v.env)
    env["ATTESTO_LOCAL_VAULT_INSTALLATION_ID"] = "inst-other"
    from lvtest import run
    p = run(["enqueue", "--stream-id", "s", "--source-ref", "r2"], env=env, check=2)
    assert "belongs to installation inst-test" in p.stderr
