# SPDX-License-Identifier: Apache-2.0
"""Helpers for the witness system tests: submitting through the CLI and the
endpoint alike, an independent verifier (python3-cryptography), and reading
the witness database directly to prove what was (not) stored."""
import hashlib
import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import lvtest
from lvtest import LV_BIN, run

RECEIPT_DOMAIN = b"attesto.local-vault.witness-receipt.v1"
FORK_DOMAIN = b"attesto.local-vault.fork-evidence.v1"
MAX_SEQ = 2**53 - 1

# Exit codes and HTTP statuses of the contract, by result.
EXIT = {"accepted": 0, "replayed": 0, "fork_evidence": 3, "checkpoint_gap": 6, "bad_input": 2,
        "token": 5}
STATUS = {"accepted": 200, "replayed": 200, "fork_evidence": 409, "checkpoint_gap": 422,
          "bad_input": 400}


def h(*parts):
    """A deterministic checkpoint hash (64 lowercase hex)."""
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def jcs(obj):
    """RFC 8785 for the statements' content (ASCII keys, strings, integers,
    null, nested objects and arrays): sorted keys, no white space. Written
    independently of the C serializer."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


ASAN = "asan" in os.environ.get("LV_BUILD_DIR", "")


def volume_env(env):
    """For the volume tests (race, crash) in the ASan build: thousands of
    requests and hundreds of processes skip LeakSanitizer, whose suppression
    of SoftHSM's own leak needs slow unwinding at every malloc (5x the cost).
    ASan's and UBSan's memory checks stay on; the table, input, endpoint and
    socket tests run every code path with leak checking."""
    env = dict(env)
    if ASAN:
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
        env["LSAN_OPTIONS"] = ""
    return env


class Vault(lvtest.Vault):
    """lvtest.Vault, with a copy of its token taken right after the keys were
    made, before any witness state was anchored on it (for DbView)."""

    def __init__(self, tmp, keys=True, label="attesto"):
        super().__init__(tmp, keys=keys, label=label)
        self.pristine = os.path.join(self.dir, "token-pristine")
        shutil.copytree(self.env["LV_TOKEN_DIR"], self.pristine)


class DbView:
    """A copy of the token (same keys, made once, fast to copy) with its own
    witness database: tests that share one token (slow to make in the ASan
    build) keep their state apart. A copy each, because the token anchors
    one witness database per key (docs/witness.md, "The anchor")."""

    def __init__(self, vault, name):
        self.dir = vault.dir
        self.env = dict(token_copy(vault, f"view-{name}", source=vault.pristine),
                        ATTESTO_LOCAL_VAULT_WITNESS_DB=os.path.join(vault.dir,
                                                                    f"witness-{name}.sqlite3"))
        self.env["LV_TOKEN_DIR"] = os.path.join(vault.dir, f"token-view-{name}")

    def run(self, args, **kw):
        kw.setdefault("env", self.env)
        return run(args, **kw)


class Outcome:
    """What one submission produced, through either door."""

    def __init__(self, result, body, detail="", raw=None):
        self.result = result   # accepted|replayed|fork_evidence|checkpoint_gap|bad_input|token|...
        self.body = body       # bytes printed / answered (the document and "\n" when signed)
        self.detail = detail   # stderr or the error body
        self.raw = raw

    @property
    def doc(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Outcome({self.result!r}, {self.body[:80]!r}, {self.detail[:200]!r})"


def cli_args(tenant, stream, cid, seq, chash, prev=None):
    a = ["witness-checkpoint", "--tenant-id", tenant, "--stream-id", stream, "--checkpoint-id", cid,
         "--checkpoint-seq-no", str(seq), "--checkpoint-hash", chash]
    if prev is not None:
        a += ["--previous-checkpoint-hash", prev]
    return a


def cli_outcome(p):
    by_exit = {0: None, 3: "fork_evidence", 6: "checkpoint_gap", 2: "bad_input", 5: "token"}
    result = by_exit.get(p.returncode, f"exit {p.returncode}")
    if p.returncode == 0:
        result = "replayed" if b"replayed" in p.stderr else "accepted"
    return Outcome(result, p.stdout, p.stderr.decode(errors="replace"), p)


class CliSubmitter:
    name = "cli"

    def __init__(self, vault):
        self.vault = vault

    def submit(self, tenant, stream, cid, seq, chash, prev=None, setup=False):
        """setup=True marks a step that only prepares the state for the
        decision under test: in the ASan build it runs without
        LeakSanitizer (see volume_env), the decision itself with it."""
        env = volume_env(self.vault.env) if setup else self.vault.env
        p = subprocess.run([LV_BIN] + cli_args(tenant, stream, cid, seq, chash, prev),
                           env=env, capture_output=True, timeout=60)
        return cli_outcome(p)


def http_outcome(status, headers, body):
    if status in (200, 409):
        result = headers.get("attesto-witness-result", "?")
    else:
        result = {422: "checkpoint_gap", 400: "bad_input", 503: "token"}.get(status, f"http {status}")
    detail = "" if status in (200, 409) else body.decode(errors="replace")
    return Outcome(result, body, detail, (status, headers))


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Server:
    """witness-serve on a unix socket and on 127.0.0.1 for one test. Requests
    go to the unix socket unless tcp=True: without a tenants file only its
    callers may submit (TCP POSTs get 403, docs/witness.md "Tenants")."""

    def __init__(self, vault, extra=(), env=None, wait=True):
        self.vault = vault
        self.port = free_port()
        self.env = dict(env or vault.env)
        self.sockdir = tempfile.mkdtemp(prefix="lvw.")  # short: sun_path is 108 bytes
        self.sock = os.path.join(self.sockdir, "w.sock")
        self.log = open(os.path.join(vault.dir, f"serve-{self.port}.log"), "wb")
        self.proc = subprocess.Popen(
            [LV_BIN, "witness-serve", "--listen", f"unix:{self.sock}", "--listen",
             f"127.0.0.1:{self.port}"] + list(extra),
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            try:
                self.wait_listening()
            except BaseException:
                self.proc.kill()
                self.proc.wait()
                raise

    def wait_listening(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"witness-serve exited: {self.read_log()}"
            try:
                # The unix socket first: its path is this server's alone,
                # while another process may hold a port free_port() gave out.
                u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    u.connect(self.sock)
                finally:
                    u.close()
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                assert self.proc.poll() is None, f"witness-serve exited: {self.read_log()}"
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("witness-serve did not start listening")

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def connection(self, tcp=False, timeout=60):
        if tcp:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        return UnixHTTPConnection(self.sock, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None, tcp=False):
        c = conn or self.connection(tcp)
        try:
            try:
                c.request(method, path, body=body, headers=headers or {})
            except BrokenPipeError:
                # An answer on the headers alone (413, 415) may close the
                # connection before the body is sent (at once on a unix
                # socket); the answer is there to read all the same.
                pass
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            if conn is None:
                c.close()

    def post(self, obj=None, raw=None, content_type="application/json", conn=None, tcp=False,
             headers=None):
        body = raw if raw is not None else json.dumps(obj).encode()
        hd = {"Content-Type": content_type} if content_type else {}
        hd.update(headers or {})
        return self.request("POST", "/v1/witness/checkpoints", body, hd, conn, tcp)

    def stop(self, sig=15, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("witness-serve did not stop on SIGTERM")
        self.log.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)
        return self.proc.returncode


def request_body(tenant, stream, cid, seq, chash, prev=None):
    b = {"tenant_id": tenant, "stream_id": stream, "checkpoint_id": cid,
         "checkpoint_seq_no": seq, "checkpoint_hash": chash}
    if prev is not None:
        b["previous_checkpoint_hash"] = prev
    return b


class HttpSubmitter:
    name = "http"

    def __init__(self, vault, server=None):
        self.vault = vault
        self.server = server or Server(vault)

    def submit(self, tenant, stream, cid, seq, chash, prev=None, setup=False):
        return http_outcome(*self.server.post(request_body(tenant, stream, cid, seq, chash, prev)))

    def close(self):
        assert self.server.stop() == 0, self.server.read_log()


def make_submitter(kind, vault):
    return CliSubmitter(vault) if kind == "cli" else HttpSubmitter(vault)


def token_copy(vault, name, source=None):
    """An environment using a copy of the vault's token (same keys, same
    PIN), or of source (a copy of it). SoftHSM rewrites its token file at
    every C_Login, so processes that log in concurrently, or that are killed
    at random moments, each get their own copy: a hardware token has no such
    file to tear. A copy also carries the witness anchors of the token
    (docs/witness.md, "The anchor")."""
    src = vault.env["LV_TOKEN_DIR"]
    dst = os.path.join(vault.dir, f"token-{name}")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(source or src, dst)
    conf = os.path.join(dst, "softhsm2.conf")
    with open(conf) as f:
        text = f.read().replace(src, dst)
    with open(conf, "w") as f:
        f.write(text)
    return dict(vault.env, SOFTHSM2_CONF=conf)


# ---- the independent verifier ---------------------------------------------------------------

def verify_document(body, expected_pk_hex=None):
    """Checks a signed witness document as an outside verifier would; returns
    the parsed document. Raises on any failure."""
    # One line: the PEM's newlines travel escaped inside the JSON string.
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body
    doc = json.loads(body)
    assert list(doc) == ["result", "statement", "statement_hash", "signature", "public_key"], doc
    st = doc["statement"]
    canonical = jcs(st)
    # The embedded statement is already the canonical form, byte for byte.
    assert b'"statement":' + canonical + b',"statement_hash"' in body
    assert doc["statement_hash"] == hashlib.sha256(canonical).hexdigest()
    domain = {"witness_receipt": RECEIPT_DOMAIN, "fork_evidence": FORK_DOMAIN}[st["kind"]]
    pk = doc["public_key"]
    assert set(pk) == {"alg", "kid", "public_key_hex", "public_key_pem"}
    assert pk["alg"] == "Ed25519" and doc["signature"]["alg"] == "Ed25519"
    raw = bytes.fromhex(pk["public_key_hex"])
    pem_key = serialization.load_pem_public_key(pk["public_key_pem"].encode())
    assert pem_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw
    assert doc["signature"]["kid"] == pk["kid"]
    if expected_pk_hex:
        assert pk["public_key_hex"] == expected_pk_hex
    sig = bytes.fromhex(doc["signature"]["signature"])
    assert len(sig) == 64
    Ed25519PublicKey.from_public_bytes(raw).verify(sig, domain + b"\n" + canonical)
    return doc


def public_key_hex(vault):
    p = vault.run(["public-key", "--format", "hex"], check=0)
    return p.stdout.strip()


# ---- the database, read directly --------------------------------------------------------------

def db_path(vault):
    return vault.env["ATTESTO_LOCAL_VAULT_WITNESS_DB"]


def snapshot(vault):
    """Everything the witness stores, for before/after comparisons."""
    path = db_path(vault)
    if not os.path.exists(path):
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1,2,3,4").fetchall()
                for t in ("checkpoints", "heads", "fork_evidence")}
    finally:
        con.close()


def head(vault, tenant, stream, witness_id=None):
    con = sqlite3.connect(f"file:{db_path(vault)}?mode=ro", uri=True, timeout=30)
    try:
        q = "SELECT seq FROM heads WHERE tenant_id=? AND stream_id=?"
        args = [tenant, stream]
        if witness_id:
            q += " AND witness_id=?"
            args.append(witness_id)
        row = con.execute(q, args).fetchone()
        return row[0] if row else None
    finally:
        con.close()


def stored_receipts(vault):
    """{(tenant, stream, seq): (hash, receipt bytes)}"""
    con = sqlite3.connect(f"file:{db_path(vault)}?mode=ro", uri=True, timeout=30)
    try:
        return {(t, s, q): (hh, r.encode())
                for t, s, q, hh, r in con.execute(
                    "SELECT tenant_id, stream_id, seq, checkpoint_hash, receipt FROM checkpoints")}
    finally:
        con.close()


__all__ = ["Vault", "h", "jcs", "Server", "CliSubmitter", "HttpSubmitter", "make_submitter",
           "verify_document", "snapshot", "UnixHTTPConnection", "head", "stored_receipts", "request_body", "cli_args",
           "public_key_hex", "token_copy", "free_port", "volume_env", "ASAN", "DbView", "EXIT", "STATUS", "MAX_SEQ", "RECEIPT_DOMAIN", "FORK_DOMAIN"]
