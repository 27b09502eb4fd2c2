# SPDX-License-Identifier: Apache-2.0
"""The witness service started the way its socket unit starts it: the
ListenStream= and FileDescriptorName= of systemd/attesto-local-vault-witness.socket
(the socket path moved into a temp dir), the ExecStart= of
attesto-local-vault-witness.service, the PIN as the systemd credential, and
systemd-socket-activate holding the socket. A checkpoint is signed through it
on a fresh SoftHSM token and verified independently."""
import hashlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import lvtest

UNIT_DIR = os.path.join(lvtest.SOURCE_DIR, "systemd")
INSTALLED_BIN = "/usr/bin/attesto-local-vault"


def unit_settings(name):
    out = {}
    for line in open(os.path.join(UNIT_DIR, name)):
        line = line.strip()
        if line and line[0] not in "#;[":
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        self.sock = connect_unix(self.path)


def connect_unix(path, timeout=20):
    """Connects, retrying while the path exists but is not yet listening
    (systemd-socket-activate binds, then listens)."""
    deadline = time.time() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if time.time() > deadline:
                raise
            time.sleep(0.02)


def request(path, method, url, body=None):
    c = UnixHTTPConnection(path)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, url, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def jcs(obj):
    # RFC 8785 for what a statement holds (ASCII keys, strings, integers).
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def unit_environment(vault_env, creds):
    """systemd-socket-activate, like systemd, starts the service with a clean
    environment: only what the unit would set is passed (-E). Here that is
    the token's configuration (the EnvironmentFile= part) and
    CREDENTIALS_DIRECTORY (the LoadCredential= part)."""
    keep = {k: v for k, v in vault_env.items()
            if (k.startswith("ATTESTO_LOCAL_VAULT_") and k != "ATTESTO_LOCAL_VAULT_PIN_FILE")
            or k == "SOFTHSM2_CONF"}
    keep["CREDENTIALS_DIRECTORY"] = str(creds)
    # Not the unit's, the test harness's: the sanitizer build's settings and
    # leak suppressions must reach the process too.
    keep.update({k: v for k, v in os.environ.items()
                 if k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")})
    return [f"--setenv={k}={v}" for k, v in sorted(keep.items())]


def activate(path, fdname, argv, env_args, log):
    return subprocess.Popen(["systemd-socket-activate", "-l", path, f"--fdname={fdname}"] + env_args
                            + [lvtest.LV_BIN] + argv[1:], stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def activated(tmp_path):
    """(socket path, process, vault) with the witness under systemd-socket-activate."""
    sock = unit_settings("attesto-local-vault-witness.socket")
    svc = unit_settings("attesto-local-vault-witness.service")
    assert len(sock["ListenStream"]) == 1, sock["ListenStream"]
    listen = sock["ListenStream"][0]
    assert listen.startswith("/run/attesto/"), listen
    fdname = sock["FileDescriptorName"][0]
    argv = shlex.split(svc["ExecStart"][0])
    assert argv[0] == INSTALLED_BIN and argv[1] == "witness-serve", argv

    vault = lvtest.Vault(tmp_path)
    # The unit hands the PIN over as a credential, not as a file option.
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "pkcs11-pin").write_bytes(open(vault.env["ATTESTO_LOCAL_VAULT_PIN_FILE"], "rb").read())

    path = str(tmp_path / "run" / os.path.basename(listen))
    os.makedirs(os.path.dirname(path))
    log = open(tmp_path / "activate.log", "wb")
    proc = activate(path, fdname, argv, unit_environment(vault.env, creds), log)
    deadline = time.time() + 20
    while not os.path.exists(path):
        assert proc.poll() is None and time.time() < deadline, open(log.name).read()
        time.sleep(0.02)
    yield path, proc, vault, log.name
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


def test_checkpoint_signed_through_the_socket_units_listen_stream(activated):
    path, proc, vault, log = activated
    chash = hashlib.sha256(b"checkpoint 1").hexdigest()
    body = json.dumps({"tenant_id": "ten_1", "stream_id": "str_1", "checkpoint_id": "chk_1",
                       "checkpoint_seq_no": 1, "checkpoint_hash": chash}).encode()
    status, answer = request(path, "POST", "/v1/witness/checkpoints", body)
    assert status == 200, (answer, open(log).read())
    doc = json.loads(answer)
    assert doc["result"] == "accepted"
    st = doc["statement"]
    assert (st["tenant_id"], st["stream_id"], st["checkpoint_seq_no"], st["checkpoint_hash"]) == \
        ("ten_1", "str_1", 1, chash), st
    # Independently: the statement hash, and the signature under the token's
    # public key as the CLI reports it (not as the answer claims it).
    assert doc["statement_hash"] == hashlib.sha256(jcs(st)).hexdigest()
    pk_hex = vault.run(["public-key", "--format", "hex"], check=0).stdout.strip()
    assert doc["public_key"]["public_key_hex"] == pk_hex
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(pk_hex)).verify(
        bytes.fromhex(doc["signature"]["signature"]),
        b"attesto.local-vault.witness-receipt.v1\n" + jcs(st))

    # The process serves the socket systemd-socket-activate handed over under
    # the unit's name, and that socket is the one the client reached.
    assert f"systemd socket {unit_settings('attesto-local-vault-witness.socket')['FileDescriptorName'][0]}" \
        in open(log).read()
    status, _ = request(path, "GET", "/healthz")
    assert status == 200

    # SIGTERM stops it cleanly (systemd's stop), exit 0.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, open(log).read()


def shim_env(vault, tmp_path):
    """Puts the fault-injecting shim in front of the vault's SoftHSM token
    with one rule that fails nothing and logs every C_Login: a login counter."""
    shim = os.path.join(lvtest.BUILD_DIR, "tests", "libp11shim.so")
    rules = tmp_path / "shim.rules"
    rules.write_text("C_Login CKR_OK times=0\n")
    logpath = tmp_path / "shim.log"
    env = dict(vault.env)
    env["LV_SHIM_MODULE"] = env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"]
    env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"] = shim
    extra = [f"--setenv=LV_SHIM_MODULE={env['LV_SHIM_MODULE']}",
             f"--setenv=LV_SHIM_RULES={rules}", f"--setenv=LV_SHIM_LOG={logpath}"]
    return env, extra, logpath


def logins(logpath):
    try:
        return [l for l in open(logpath) if " C_Login " in l]
    except FileNotFoundError:
        return []


def notify_listener(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    return s


def notify_messages(s, until, timeout):
    out, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            out.append(s.recv(65536).decode(errors="replace"))
        except socket.timeout:
            pass
        if until(out):
            break
    return out


def test_wrong_pin_one_login_then_serves_503_token_pin_refused_without_exiting(tmp_path):
    # Under socket activation an exit would let the waiting connection start
    # the service again: one more C_Login with the same wrong PIN each time,
    # until a real HSM locks the token. So a refused PIN is tried once, and
    # the same process keeps serving, refusing everything that must sign.
    svc = unit_settings("attesto-local-vault-witness.service")
    vault = lvtest.Vault(tmp_path)
    env, extra, shimlog = shim_env(vault, tmp_path)
    argv = shlex.split(svc["ExecStart"][0])
    # A short idle exit: that it does not happen while refused is asserted.
    argv = [a if argv[k - 1] != "--idle-exit" else "1" for k, a in enumerate(argv)]
    assert "--idle-exit" in argv, argv
    chash = hashlib.sha256(b"checkpoint 1").hexdigest()
    body = json.dumps({"tenant_id": "ten_1", "stream_id": "str_1", "checkpoint_id": "chk_1",
                       "checkpoint_seq_no": 1, "checkpoint_hash": chash}).encode()
    body2 = json.dumps({"tenant_id": "ten_1", "stream_id": "str_1", "checkpoint_id": "chk_2",
                        "checkpoint_seq_no": 2, "previous_checkpoint_hash": chash,
                        "checkpoint_hash": hashlib.sha256(b"checkpoint 2").hexdigest()}).encode()

    # First with the right PIN: seq 1 accepted, so that a replay can be asked
    # of the refused service.
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "pkcs11-pin").write_bytes(open(vault.env["ATTESTO_LOCAL_VAULT_PIN_FILE"], "rb").read())
    path = str(tmp_path / "witness.sock")
    with open(tmp_path / "good.log", "wb") as log:
        proc = activate(path, "witness", argv, unit_environment(env, creds) + extra, log)
        try:
            deadline = time.time() + 20
            while not os.path.exists(path):
                assert proc.poll() is None and time.time() < deadline
                time.sleep(0.02)
            status, answer = request(path, "POST", "/v1/witness/checkpoints", body)
            assert status == 200, (answer, open(log.name).read())
            accepted = json.loads(answer)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    assert len(logins(shimlog)) == 1
    os.unlink(path)
    shimlog.unlink()

    (creds / "pkcs11-pin").write_text("not-the-pin\n")
    notify = notify_listener(str(tmp_path / "notify.sock"))
    extra.append(f"--setenv=NOTIFY_SOCKET={tmp_path / 'notify.sock'}")
    with open(tmp_path / "activate.log", "wb") as log:
        proc = activate(path, "witness", argv, unit_environment(env, creds) + extra, log)
        try:
            deadline = time.time() + 20
            while not os.path.exists(path):
                assert proc.poll() is None and time.time() < deadline
                time.sleep(0.02)
            pid = proc.pid
            started = time.time()
            answers = []
            for k in range(20):
                if k % 4 == 0:
                    answers.append(("sign",) + request(path, "POST", "/v1/witness/checkpoints",
                                                       body2))
                elif k % 4 == 1:
                    answers.append(("health",) + request(path, "GET", "/healthz"))
                elif k % 4 == 2:
                    answers.append(("identity",) + request(path, "GET", "/v1/witness/identity"))
                else:
                    answers.append(("replay",) + request(path, "POST", "/v1/witness/checkpoints",
                                                         body))
            # Past the 1 s idle exit: still the same process.
            time.sleep(max(0, started + 2.5 - time.time()))
            assert proc.poll() is None, open(log.name).read()
            assert proc.pid == pid
            assert len(logins(shimlog)) == 1, logins(shimlog)
            for kind, status, answer in answers:
                if kind == "replay":
                    assert status == 200, answer
                    doc = json.loads(answer)
                    # The stored receipt, as first answered: nothing new signed.
                    assert doc["statement"] == accepted["statement"], doc
                    assert doc["signature"] == accepted["signature"], doc
                    continue
                assert status == 503, (kind, answer)
                doc = json.loads(answer)
                if kind == "health":
                    assert doc["token"] == "pin_refused", doc
                else:
                    assert doc["error"] == "token_pin_refused", (kind, doc)
                    assert "PIN" in doc["message"], doc
            msgs = notify_messages(notify, lambda m: any("READY=1" in x for x in m), 5)
            ready = [m for m in msgs if "READY=1" in m]
            assert ready, msgs
            status_line = [l for m in msgs for l in m.split("\n") if l.startswith("STATUS=")]
            assert any("PIN refused" in l for l in status_line), msgs
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=20)
            notify.close()
    assert rc == 0, open(tmp_path / "activate.log").read()
    assert len(logins(shimlog)) == 1
    assert "PIN" in open(tmp_path / "activate.log").read()
