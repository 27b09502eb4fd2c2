# SPDX-License-Identifier: Apache-2.0
"""Socket activation: witness-serve under systemd-socket-activate, on a unix
socket, on 127.0.0.1 and on both at once, driven with curl; --idle-exit ends
the service when nothing happens (the sockets stay with the activator)."""
import hashlib
import json
import os
import subprocess
import time

from lvtest import LV_BIN
import pytest

from witnesslib import (DbView, Vault, free_port, h, public_key_hex, request_body,
                        verify_document)

ENV_VARS = ["SOFTHSM2_CONF", "ATTESTO_LOCAL_VAULT_PKCS11_MODULE", "ATTESTO_LOCAL_VAULT_PIN_FILE",
            "ATTESTO_LOCAL_VAULT_SIGNING_KEY", "ATTESTO_LOCAL_VAULT_WITNESS_DB",
            "ATTESTO_LOCAL_VAULT_INSTALLATION_ID", "ATTESTO_LOCAL_VAULT_WITNESS_TENANTS",
            "ASAN_OPTIONS", "LSAN_OPTIONS",
            "UBSAN_OPTIONS"]


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """One provisioned token for the module; each test has its own database."""
    v = Vault(tmp_path_factory.mktemp("socket"))
    v.pk = public_key_hex(v)
    return v


@pytest.fixture
def vault(token, request):
    view = DbView(token, request.node.name)
    view.pk = token.pk
    return view


def activate(vault, listens, names, extra=()):
    """systemd-socket-activate passes only the variables named with -E."""
    args = ["systemd-socket-activate"]
    for l in listens:
        args += ["-l", l]
    args += ["--fdname=" + ":".join(names)]
    for v in ENV_VARS:
        if v in vault.env:
            args += ["-E", f"{v}={vault.env[v]}"]
    args += [LV_BIN, "witness-serve"] + list(extra)
    log = open(os.path.join(vault.dir, f"activate-{time.monotonic_ns()}.log"), "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT), log


def curl(*args, data=None):
    cmd = ["curl", "-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"] + list(args)
    if data is not None:
        cmd += ["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@-"]
    p = subprocess.run(cmd, input=data, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    body, _, code = p.stdout.rpartition(b"\n")
    return int(code), body


def wait_for(check, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return check()
        except AssertionError:
            time.sleep(0.05)
    return check()


def exercise(vault, base, via):
    pk = vault.pk
    code, body = wait_for(lambda: curl(*via, base + "/healthz"))
    assert code == 200, body
    code, body = curl(*via, base + "/v1/witness/identity")
    assert code == 200 and json.loads(body)["public_key"]["public_key_hex"] == pk
    stream = "str_" + base.replace(":", "_").replace("/", "_")[-20:]
    req = json.dumps(request_body("ten_sa", stream, "c0", 0, h(stream, 0))).encode()
    code, first = curl(*via, base + "/v1/witness/checkpoints", data=req)
    assert code == 200, first
    doc = verify_document(first, pk)
    assert doc["statement"]["stream_id"] == stream
    code, again = curl(*via, base + "/v1/witness/checkpoints", data=req)
    assert code == 200 and again == first
    req = json.dumps(request_body("ten_sa", stream, "c1", 1, h("other", 1), h("other", 0))).encode()
    code, body = curl(*via, base + "/v1/witness/checkpoints", data=req)
    assert code == 409 and json.loads(body)["statement"]["reason"] == "divergent_history"


def stop(proc, log):
    proc.terminate()
    assert proc.wait(timeout=20) == 0
    log.close()


def test_unix_socket_activation(vault):
    sock = os.path.join(vault.dir, f"w{free_port()}.sock")
    proc, log = activate(vault, [sock], ["witness"])
    try:
        exercise(vault, "http://localhost", ["--unix-socket", sock])
    finally:
        stop(proc, log)
    text = open(log.name).read()
    assert "systemd socket witness" in text


SECRET = "socket-test-secret"


def with_tenants(vault):
    """TCP callers submit only with a tenant's bearer secret (docs/witness.md
    "Tenants"); the unix socket's caller (this test's uid) for the same tenant."""
    path = os.path.join(vault.dir, "tenants")
    with open(path, "w") as f:
        f.write(f"tenant ten_sa uid={os.getuid()} "
                f"bearer-sha256={hashlib.sha256(SECRET.encode()).hexdigest()}\n")
    os.chmod(path, 0o600)
    vault.env["ATTESTO_LOCAL_VAULT_WITNESS_TENANTS"] = path
    return ["-H", f"Authorization: Bearer {SECRET}"]


def test_tcp_socket_activation_on_loopback(vault):
    port = free_port()
    bearer = with_tenants(vault)
    proc, log = activate(vault, [f"127.0.0.1:{port}"], ["witness-tcp"])
    try:
        exercise(vault, f"http://127.0.0.1:{port}", bearer)
    finally:
        stop(proc, log)


def test_unix_and_tcp_together_then_idle_exit(vault):
    sock = os.path.join(vault.dir, f"w{free_port()}.sock")
    port = free_port()
    bearer = with_tenants(vault)
    proc, log = activate(vault, [sock, f"127.0.0.1:{port}"], ["witness", "witness-tcp"],
                         ["--idle-exit", "5"])
    try:
        exercise(vault, "http://localhost", ["--unix-socket", sock])
        exercise(vault, f"http://127.0.0.1:{port}", bearer)
        t0 = time.time()
        assert proc.wait(timeout=30) == 0
        assert time.time() - t0 >= 4.0    # idle for the full interval first
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert "idle for 5s: exiting" in open(log.name).read()
