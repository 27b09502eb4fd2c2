# SPDX-License-Identifier: Apache-2.0
"""doctor on fresh SoftHSM tokens, real SQLite files and the reference
receiver over real TLS: the all-pass case, then each failure named by the
check that failed and its reason, with exit 1 (0 only when nothing fails)."""
import json
import os
import pty
import socket
import sqlite3
import subprocess
import sys

import pytest

import lvtest
from relaylib import enqueue

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reliability"))
from faultlib import Shim  # noqa: E402  (the fault-injecting PKCS#11 shim)

# Every check, in the order doctor runs them.
CHECKS = ["module", "token", "pin", "mechanisms", "signing_key", "encryption_key", "spool_db",
          "witness_db", "dek", "relay_url", "relay_credential", "relay", "receipt_keys"]


def doctor(vault, *args, check=None, env=None):
    p = lvtest.run(["doctor", "--json", *args], env=env or vault.env, timeout=60)
    assert p.stdout.strip(), p.stderr
    rep = json.loads(p.stdout)
    assert [c["name"] for c in rep["checks"]] == CHECKS
    assert rep["ok"] == (p.returncode == 0)
    assert p.returncode in (0, 1), p.stderr
    if check is not None:
        assert p.returncode == check, p.stdout
    return {c["name"]: c for c in rep["checks"]}, p


def cfg(shared, **changes):
    """A copy of the shared vault's environment with some variables changed
    (None removes one)."""
    env = dict(shared.env)
    for k, v in changes.items():
        name = "ATTESTO_LOCAL_VAULT_" + k
        if v is None:
            env.pop(name, None)
        else:
            env[name] = v
    return env


def failed(checks):
    return sorted(n for n, c in checks.items() if c["status"] == "fail")


def populate(vault):
    """Creates both databases the way the service would."""
    enqueue(vault, "str_1", "a")
    vault.run(["witness-checkpoint", "--tenant-id", "ten_1", "--stream-id", "str_1",
               "--checkpoint-id", "chk_1", "--checkpoint-seq-no", "1",
               "--checkpoint-hash", "ab" * 32], check=0)


def pkcs11_tool(vault, *args):
    with open(vault.env["ATTESTO_LOCAL_VAULT_PIN_FILE"]) as f:
        pin = f.read().strip()
    p = subprocess.run(["pkcs11-tool", "--module", vault.env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"],
                        "--login", "--pin", pin, *args], env=vault.env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- all pass ----

def test_all_checks_pass_against_the_reference_receiver(shared):
    vault, receiver = shared, shared.receiver
    checks, p = doctor(vault, check=0)
    assert failed(checks) == []
    assert all(c["status"] == "pass" for c in checks.values()), checks
    assert "TLS verified, OPTIONS answered HTTP 204" in checks["relay"]["detail"]
    assert "ATTESTO-LOCAL-VAULT-RELAY/1" in checks["relay"]["detail"]
    assert "integrity_check ok, 1 item(s)" in checks["spool_db"]["detail"]
    assert "1 wrapped DEK(s) unwrap" in checks["dek"]["detail"]
    assert vault.env["ATTESTO_LOCAL_VAULT_PIN_FILE"] in checks["pin"]["detail"]
    assert "1 key(s) pinned, receipts verified: " + receiver.receipt_kid in \
        checks["receipt_keys"]["detail"]
    # The round trip recorded nothing at the receiver.
    assert receiver.events() == []


def test_terminal_gets_a_table(shared):
    vault = shared
    master, slave = pty.openpty()
    p = subprocess.Popen([lvtest.LV_BIN, "doctor"], env=vault.env, stdout=slave,
                         stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(60) == 0
    lines = out.decode().replace("\r", "").splitlines()
    rows = [l for l in lines if l[:1] in ("✓", "✗", "!", "-")]
    assert len(rows) == len(CHECKS) and all(r.startswith("✓ ") for r in rows), lines
    assert lines[-1] == "All checks passed."


def test_fresh_installation_warns_but_passes(vault, receiver):
    # No database yet: created on first use, in a directory that allows it.
    checks, _ = doctor(vault, check=0)
    assert checks["spool_db"]["status"] == "warn"
    assert checks["spool_db"]["reason"] == "not_created"
    assert checks["witness_db"]["status"] == "warn"
    assert checks["dek"]["status"] == "pass" and "first use" in checks["dek"]["detail"]


def test_database_in_a_missing_directory_fails(vault, receiver):
    vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = os.path.join(vault.dir, "nope", "spool.sqlite3")
    checks, _ = doctor(vault, check=1)
    assert failed(checks) == ["spool_db"]
    assert checks["spool_db"]["reason"] == "missing"


# ---- relay failures: each named by where it stopped ----

def test_wrong_ca_is_a_tls_verification_failure(shared, pki):
    checks, _ = doctor(shared, check=1, env=cfg(shared, CA_FILE=pki.wrong_ca))
    assert failed(checks) == ["relay"]
    assert checks["relay"]["reason"] == "tls_verify"
    assert checks["relay"]["detail"].startswith("TLS verification failed")


def test_certificate_for_another_host_is_a_tls_verification_failure(tmp_path, vault, pki):
    from relaylib import Receiver, relay_env
    r = Receiver(tmp_path / "other", pki, register=[("inst-test", vault.pk)],
                 cert=pki.other_cert, key=pki.other_key)
    try:
        relay_env(vault, r, pki)
        checks, _ = doctor(vault, check=1)
    finally:
        r.stop()
    assert checks["relay"]["reason"] == "tls_verify"


def test_http_url_is_refused_without_a_connection(shared):
    env = cfg(shared, RELAY_URL="http://127.0.0.1:9/v2/local-vault/installations/inst-test/events")
    checks, _ = doctor(shared, check=1, env=env)
    assert failed(checks) == ["relay_url"]
    assert checks["relay_url"]["reason"] == "not_https"
    assert "must be an https:// URL" in checks["relay_url"]["detail"]
    assert checks["relay"]["status"] == "skip"


def test_missing_relay_url_fails(shared):
    checks, _ = doctor(shared, check=1, env=cfg(shared, RELAY_URL=None))
    assert checks["relay_url"]["reason"] == "not_configured"


def test_unreachable_relay_is_a_tcp_failure(shared):
    env = cfg(shared, RELAY_URL=f"https://127.0.0.1:{closed_port()}/v2/local-vault/"
                                "installations/inst-test/events")
    checks, _ = doctor(shared, check=1, env=env)
    assert failed(checks) == ["relay"]
    assert checks["relay"]["reason"] == "tcp"
    assert checks["relay"]["detail"].startswith("TCP: cannot connect")


def test_unresolvable_host_is_a_dns_failure(shared, pki, tmp_path):
    # The lookup must stay on loopback: a private mount namespace gives the
    # process a resolv.conf whose only server is 127.0.0.1, where nothing
    # answers DNS.
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    env = dict(shared.env, ATTESTO_LOCAL_VAULT_CA_FILE=pki.ca,
               ATTESTO_LOCAL_VAULT_RELAY_URL="https://doctor-test.invalid/v2/local-vault/"
                                             "installations/inst-test/events")
    cmd = (f"mount --bind {conf} /etc/resolv.conf && exec {lvtest.LV_BIN} doctor --json "
           "--connect-timeout-ms 3000")
    p = subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert failed(checks) == ["relay"]
    assert checks["relay"]["reason"] == "dns"
    assert checks["relay"]["detail"].startswith("DNS:")


def test_wrong_path_is_a_not_found_failure(shared):
    env = cfg(shared, RELAY_URL=shared.receiver.base + "/v2/elsewhere")
    checks, _ = doctor(shared, check=1, env=env)
    assert failed(checks) == ["relay"]
    assert checks["relay"]["reason"] == "not_found"
    assert checks["relay"]["detail"].startswith("HTTP status 404")


class OptionsServer:
    """An HTTPS server (the test PKI's certificate for 127.0.0.1) that answers
    every request with one status: a receiver that implements only the POST
    of the protocol (405 or 501 to OPTIONS), or one that refuses (401, 403,
    404, 5xx). It records the methods it saw."""

    def __init__(self, pki, status):
        import http.server
        import ssl
        import threading
        seen = self.methods = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                seen.append(self.command)
                body = json.dumps({"error": "status", "detail": str(status)}).encode()
                self.send_response(status)
                if status == 405:
                    self.send_header("Allow", "POST")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_OPTIONS = do_POST = do_GET = answer

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = (f"https://127.0.0.1:{self.httpd.server_address[1]}"
                    "/v2/local-vault/installations/inst-test/events")
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status", [405, 501])
def test_receiver_that_implements_only_post_passes(shared, pki, status):
    srv = OptionsServer(pki, status)
    try:
        checks, _ = doctor(shared, check=0, env=cfg(shared, RELAY_URL=srv.url))
    finally:
        srv.stop()
    assert checks["relay"]["status"] == "pass", checks["relay"]
    assert f"OPTIONS answered HTTP {status}" in checks["relay"]["detail"]
    assert "implements only POST" in checks["relay"]["detail"]
    if status == 405:
        assert "Allow: POST" in checks["relay"]["detail"]
    # The probe never sends an envelope: one OPTIONS, no POST.
    assert srv.methods == ["OPTIONS"]


@pytest.mark.parametrize("status,reason", [(401, "unauthorized"), (403, "forbidden"),
                                           (404, "not_found"), (500, "server_error"),
                                           (502, "server_error"), (503, "server_error")])
def test_refusing_receiver_fails_with_a_named_reason(shared, pki, status, reason):
    srv = OptionsServer(pki, status)
    try:
        checks, p = doctor(shared, check=1, env=cfg(shared, RELAY_URL=srv.url))
    finally:
        srv.stop()
    assert failed(checks) == ["relay"]
    assert checks["relay"]["reason"] == reason
    assert checks["relay"]["detail"].startswith(f"HTTP status {status} after a verified TLS")


# ---- keys ----

def test_missing_key_is_named(shared):
    env = cfg(shared, SIGNING_KEY="pkcs11:token=attesto;object=lv-signing-absent;type=private")
    checks, _ = doctor(shared, check=1, env=env)
    assert failed(checks) == ["signing_key"]
    assert checks["signing_key"]["reason"] == "missing"
    assert "lv-signing-absent" in checks["signing_key"]["detail"]


def test_extractable_signing_key_is_named(tmp_path, pki):
    v = lvtest.Vault(tmp_path / "v", keys=False)
    # The KEK made by keys init beside a signing key of another name; the
    # configured signing key is then made extractable by pkcs11-tool.
    env = dict(v.env, ATTESTO_LOCAL_VAULT_SIGNING_KEY="pkcs11:token=attesto;object=spare;"
                                                      "type=private")
    lvtest.run(["keys", "init"], env=env, check=0)
    pkcs11_tool(v, "--keypairgen", "--key-type", "EC:edwards25519", "--label", "lv-signing",
                "--id", "05", "--usage-sign", "--sensitive", "--private", "--extractable")
    v.env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = f"https://127.0.0.1:{closed_port()}/x"
    v.env["ATTESTO_LOCAL_VAULT_CA_FILE"] = pki.ca
    checks, _ = doctor(v, check=1)
    assert failed(checks) == ["relay", "signing_key"]
    assert checks["signing_key"]["reason"] == "bad_attributes"
    assert "CKA_EXTRACTABLE is TRUE" in checks["signing_key"]["detail"]


def test_extractable_kek_is_named_and_the_dek_not_tried(vault, receiver):
    pkcs11_tool(vault, "--delete-object", "--type", "secrkey", "--label", "lv-spool-kek")
    pkcs11_tool(vault, "--keygen", "--key-type", "AES:32", "--label", "lv-spool-kek", "--id", "0a",
                "--sensitive", "--private", "--extractable", "--usage-wrap")
    checks, _ = doctor(vault, check=1)
    assert failed(checks) == ["encryption_key"]
    assert checks["encryption_key"]["reason"] == "bad_attributes"
    assert "CKA_EXTRACTABLE is TRUE" in checks["encryption_key"]["detail"]
    assert checks["dek"]["status"] == "skip"


def test_dek_wrapped_under_another_kek_is_named(vault, receiver):
    populate(vault)
    # Replace the KEK: the spool's DEK no longer unwraps.
    pkcs11_tool(vault, "--delete-object", "--type", "secrkey", "--label", "lv-spool-kek")
    vault.run(["keys", "init"], check=0)
    checks, _ = doctor(vault, check=1)
    assert failed(checks) == ["dek"]
    assert checks["dek"]["reason"] == "unwrap_failed"


def test_wrong_pin_fails_the_pin_check_only(shared, tmp_path):
    bad = tmp_path / "bad-pin"
    bad.write_text("000000\n")
    checks, _ = doctor(shared, check=1, env=cfg(shared, PIN_FILE=str(bad)))
    assert checks["module"]["status"] == "pass" and checks["token"]["status"] == "pass"
    assert checks["pin"]["status"] == "fail" and "CKR_PIN_INCORRECT" in checks["pin"]["detail"]
    assert "not retried" in checks["pin"]["detail"]
    assert checks["signing_key"]["status"] == "skip"
    # The right PIN still works: one wrong attempt was made, not a loop.
    checks, _ = doctor(shared, check=0)


def test_unreadable_pin_file_fails_the_pin_check(shared, tmp_path):
    checks, _ = doctor(shared, check=1, env=cfg(shared, PIN_FILE=str(tmp_path / "absent-pin")))
    assert failed(checks) == ["pin"]
    assert "does not exist" in checks["pin"]["detail"]


def test_absent_token_and_module(shared):
    env = cfg(shared, SIGNING_KEY="pkcs11:token=nosuch;object=lv-signing;type=private",
              ENCRYPTION_KEY="pkcs11:token=nosuch;object=lv-spool-kek;type=secret-key")
    checks, _ = doctor(shared, check=1, env=env)
    assert checks["module"]["status"] == "pass"
    assert checks["token"]["status"] == "fail" and checks["token"]["reason"] == "not_found"
    assert [checks[n]["status"] for n in ("pin", "signing_key", "encryption_key", "dek")] == \
        ["skip"] * 4
    env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"] = os.path.join(shared.dir, "no-module.so")
    checks, _ = doctor(shared, check=1, env=env)
    assert checks["module"]["status"] == "fail"
    assert checks["module"]["reason"] == "module_load_failed"
    assert checks["token"]["status"] == "skip"


# ---- databases ----

def test_garbage_spool_file_is_corrupt(vault, receiver):
    path = vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]
    with open(path, "wb") as f:
        f.write(os.urandom(8192))
    os.chmod(path, 0o600)
    checks, _ = doctor(vault, check=1)
    assert failed(checks) == ["spool_db"]
    assert checks["spool_db"]["reason"] == "corrupt"
    assert checks["dek"]["status"] == "skip"


def test_damaged_index_fails_integrity_check(vault, receiver):
    lines = "".join(json.dumps({"stream_id": f"s{i % 7}", "source_ref": f"r{i}",
                                "payload": {"n": i}}) + "\n" for i in range(300))
    vault.run(["enqueue", "--jsonl", "-"], input=lines, check=0)
    path = vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    roots = dict(db.execute("SELECT name, rootpage FROM sqlite_schema WHERE type = 'index'"))
    db.close()
    # Point the interior root page of one index at the root of another: the
    # file still opens, but integrity_check finds the damage.
    with open(path, "r+b") as f:
        f.seek((roots["items_state"] - 1) * page)
        assert f.read(1) == b"\x02", "items_state root is not an interior page"
        f.seek((roots["items_state"] - 1) * page + 8)
        f.write(roots["streams_due"].to_bytes(4, "big"))
    before = open(path, "rb").read()
    checks, _ = doctor(vault, check=1)
    assert failed(checks) == ["spool_db"]
    assert checks["spool_db"]["reason"] == "corrupt"
    assert checks["spool_db"]["detail"].split(": ", 1)[1].startswith("integrity_check: ")
    # Read-only: doctor wrote nothing.
    assert open(path, "rb").read() == before


def test_witness_database_of_the_wrong_kind(shared):
    # The spool where the witness database should be.
    env = cfg(shared, WITNESS_DB=shared.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"])
    checks, _ = doctor(shared, check=1, env=env)
    assert failed(checks) == ["witness_db"]
    assert checks["witness_db"]["reason"] == "wrong_schema"


def test_world_readable_database_fails(vault, receiver):
    populate(vault)
    os.chmod(vault.env["ATTESTO_LOCAL_VAULT_WITNESS_DB"], 0o644)
    checks, _ = doctor(vault, check=1)
    assert failed(checks) == ["witness_db"]
    assert checks["witness_db"]["reason"] == "permissions"


def test_spool_of_another_installation(shared):
    checks, _ = doctor(shared, check=1, env=cfg(shared, INSTALLATION_ID="inst-other"))
    assert "spool_db" in failed(checks)
    assert checks["spool_db"]["reason"] == "installation_mismatch"


# ---- pinned receipt keys ----

def test_unpinned_receipts_are_a_warning_that_passes(shared):
    env = cfg(shared, RECEIPT_KEYS_FILE=None)
    checks, p = doctor(shared, env=env, check=0)
    rk = checks["receipt_keys"]
    assert rk["status"] == "warn" and rk["reason"] == "not_verified"
    assert "receipts are not verified" in rk["detail"]


def test_bad_receipt_keys_file_fails_naming_the_field(shared, tmp_path):
    bad = tmp_path / "keys.json"
    bad.write_text('[{"alg":"Ed25519","kid":"rcv-1","public_key_hex":"abc"}]')
    checks, p = doctor(shared, env=cfg(shared, RECEIPT_KEYS_FILE=str(bad)), check=1)
    assert failed(checks) == ["receipt_keys"]
    assert checks["receipt_keys"]["reason"] == "invalid"
    assert "[0].public_key_hex: must be 64 hex digits" in checks["receipt_keys"]["detail"]


def test_unreadable_receipt_keys_file_fails(shared, tmp_path):
    missing = str(tmp_path / "nope.json")
    checks, _ = doctor(shared, env=cfg(shared, RECEIPT_KEYS_FILE=missing), check=1)
    assert failed(checks) == ["receipt_keys"]
    assert missing + ": cannot be read" in checks["receipt_keys"]["detail"]


# ---- usage ----

@pytest.mark.parametrize("args,needle", [
    (["--bogus"], "--bogus: unknown option"),
    (["--timeout-ms", "5"], "--timeout-ms: 5: must be an integer from 100"),
    (["extra"], "extra: unexpected argument"),
])
def test_usage_errors_exit_2(shared, args, needle):
    p = shared.run(["doctor", *args], check=2)
    assert needle in p.stderr and p.stdout == ""


def test_at_most_one_login(vault, receiver):
    """The PIN check logs in once and every later check uses that login; a
    refused PIN is tried once (a PIN retry counter is never spent twice)."""
    populate(vault)
    shim = Shim(vault)
    # The first C_Login of the process passes, any second one would fail.
    shim.set_rules("C_Login CKR_PIN_LOCKED after=1 times=0 effect=none")
    checks, _ = doctor(vault, check=0)
    assert failed(checks) == [] and checks["dek"]["status"] == "pass"
    assert shim.injected("C_Login") == [], "a second login was attempted"
    # Every C_Login refused: one attempt, the PIN check fails, keys skipped.
    shim.set_rules("C_Login CKR_PIN_INCORRECT times=0 effect=none")
    checks, _ = doctor(vault, check=1)
    assert checks["pin"]["status"] == "fail" and "CKR_PIN_INCORRECT" in checks["pin"]["detail"]
    assert checks["signing_key"]["status"] == "skip"
    assert len(shim.injected(" C_Login CKR_PIN_INCORRECT")) == 1
