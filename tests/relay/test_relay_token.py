# SPDX-License-Identifier: Apache-2.0
"""The relay's bearer credential: read only from the systemd credential
relay-token or from --relay-token-file / ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE,
sent as Authorization: Bearer to the relay URL over verified TLS, and found
in no output. Against the reference receiver with --require-token-file over
real TLS and a fresh SoftHSM token: without the credential a 401 pauses the
streams (nothing delivered, no attempt burnt); with it, everything is
delivered. Bad credential sources are refused at start: one line naming the
option and the rule, exit 2, nothing written."""
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import time

import pytest

import lvtest
from relaylib import drain_once, enqueue, items, status

SECRET = "lvtok-" + secrets.token_hex(24)  # grep-able: 6 + 48 bytes


def write_secret(path, value=SECRET, mode=0o600):
    path.write_text(value + "\n")
    os.chmod(path, mode)
    return path


def token_receiver(start_receiver, vault, tmp_path):
    tok = write_secret(tmp_path / "receiver-token")
    return start_receiver(vault, extra=["--require-token-file", str(tok)])


def drain_until_delivered(vault, n, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        p, s = drain_once(vault)
        if (not s.get("paused") and status(vault)["counts"]["receipted"] == n) \
                or time.monotonic() > deadline:
            return p, s
        time.sleep(0.05)


def test_without_the_credential_401_pauses_then_the_file_delivers(vault, start_receiver,
                                                                   tmp_path):
    receiver = token_receiver(start_receiver, vault, tmp_path)
    for i in range(3):
        enqueue(vault, f"s{i}", f"p{i}")
    p, s = drain_once(vault, "--max-in-flight", "1")
    assert p.returncode == 7, p.stderr
    assert s["paused"]["reason"] == "http_401"
    assert s["delivered"] == 0
    assert all(i["attempts"] == 0 and i["state"] == "queued" for i in items(vault))
    assert receiver.events() == []
    # The credential, from the file the option names.
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE"] = str(write_secret(tmp_path / "relay-token"))
    p, s = drain_until_delivered(vault, 3)
    assert p.returncode == 0, p.stderr
    assert status(vault)["counts"]["receipted"] == 3
    assert len(receiver.events()) == 3


def test_the_systemd_credential_comes_first(vault, start_receiver, tmp_path):
    receiver = token_receiver(start_receiver, vault, tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir()
    write_secret(creds / "relay-token", mode=0o400)
    # A wrong file beside it is not read: the credential directory wins.
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE"] = str(
        write_secret(tmp_path / "wrong-token", "not-the-token"))
    vault.env["CREDENTIALS_DIRECTORY"] = str(creds)
    enqueue(vault, "s1", "p1")
    p, s = drain_once(vault)
    assert p.returncode == 0, p.stderr
    assert s["delivered"] == 1 and len(receiver.events()) == 1
    # And the wrong file alone is refused by the receiver: 401, paused.
    del vault.env["CREDENTIALS_DIRECTORY"]
    enqueue(vault, "s2", "p2")
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["paused"]["reason"] == "http_401"


def test_the_secret_appears_in_no_output(vault, start_receiver, tmp_path):
    """Logs at debug (a failed attempt and deliveries), the metrics file,
    status/list/show/doctor, every file beside the spool and the receiver's
    log: the secret is in none of them. Core dumps are off for the process
    (PR_SET_DUMPABLE 0, LimitCORE=0 in the units), so there is no core file
    to search."""
    receiver = token_receiver(start_receiver, vault, tmp_path)
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE"] = str(write_secret(tmp_path / "relay-token"))
    vault.env["ATTESTO_LOCAL_VAULT_LOG_LEVEL"] = "debug"
    for i in range(3):
        enqueue(vault, f"s{i}", f"p{i}")
    receiver.set_faults("503:count=1")
    metrics = tmp_path / "metrics.prom"
    proc = subprocess.Popen([lvtest.LV_BIN, "drain-loop", "--backoff-base-ms", "5",
                             "--metrics-file", str(metrics)], env=vault.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while status(vault)["counts"]["receipted"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not metrics.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert status(vault)["counts"]["receipted"] == 3
    seen = out + err
    assert "REASON=http_503" in seen or "http_503" in seen, seen  # the failure was logged
    assert "delivered" in seen  # and the deliveries, at debug
    seen += metrics.read_text()
    for args in (["status", "--json"], ["status"], ["list", "--json"], ["doctor", "--json"],
                 ["show", "--json", "local-vault:inst-test:p0"]):
        p = vault.run(args, check=None)
        seen += p.stdout + p.stderr
    assert SECRET not in seen
    spool_dir = os.path.dirname(vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"])
    for name in os.listdir(spool_dir):
        path = os.path.join(spool_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert SECRET.encode() not in f.read(), name
    assert SECRET not in receiver.stderr()


def test_doctor_names_the_credential_and_the_refusal(vault, start_receiver, tmp_path):
    token_receiver(start_receiver, vault, tmp_path)
    p = vault.run(["doctor", "--json"], check=None)
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["relay_credential"]["status"] == "pass"
    assert checks["relay_credential"]["reason"] == "none"
    assert checks["relay"]["status"] == "fail" and checks["relay"]["reason"] == "unauthorized"
    # The right credential: the receiver takes it.
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE"] = str(write_secret(tmp_path / "relay-token"))
    p = vault.run(["doctor", "--json"], check=None)
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["relay_credential"]["status"] == "pass"
    assert "sent as Authorization: Bearer" in checks["relay_credential"]["detail"]
    assert checks["relay"]["status"] == "pass", checks["relay"]
    assert SECRET not in p.stdout + p.stderr
    # Another credential: refused, and doctor says it is the credential.
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE"] = str(
        write_secret(tmp_path / "other-token", "lvtok-other"))
    p = vault.run(["doctor", "--json"], check=None)
    assert p.returncode != 0
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["relay"]["reason"] == "unauthorized"
    assert "refuses the credential from" in checks["relay"]["detail"]


BAD_FILES = [
    ("empty", "", 0o600, "empty"),
    ("two-lines", "abc\ndef", 0o600, "must hold one line"),
    ("space", "abc def", 0o600, "RFC 6750 bearer token"),
    ("quote", 'abc"def', 0o600, "RFC 6750 bearer token"),
    ("inner-equals", "ab=cd", 0o600, "RFC 6750 bearer token"),
    ("world-readable", SECRET, 0o644, "others must not read or write"),
    ("too-long", "a" * 5000, 0o600, "longer than 4096 bytes"),
]


@pytest.mark.parametrize("name,content,mode,rule", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_credential_files_are_refused_naming_the_rule(vault, start_receiver, tmp_path, name,
                                                          content, mode, rule):
    receiver = start_receiver(vault)
    enqueue(vault, "s1", "p1")
    path = tmp_path / name
    path.write_text(content)
    os.chmod(path, mode)
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE"] = str(path)
    before = spool_rows(vault)
    p = vault.run(["drain-once"], check=None)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "--relay-token-file" in lines[0] and rule in lines[0] and str(path) in lines[0]
    if content:
        assert content[:40] not in p.stderr  # never quoted
    assert spool_rows(vault) == before
    assert receiver.events() == []


def test_missing_file_and_plain_values_are_refused(vault, tmp_path):
    enqueue(vault, "s1", "p1")
    before = spool_rows(vault)
    env = dict(vault.env)
    env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = "https://127.0.0.1:9/"
    env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE"] = str(tmp_path / "nope")
    p = vault.run(["drain-once"], env=env, check=None)
    assert p.returncode == 2 and "--relay-token-file" in p.stderr and "does not exist" in p.stderr
    del env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE"]
    p = vault.run(["--relay-token", SECRET, "drain-once"], env=env, check=None)
    assert p.returncode == 2 and "never taken on the command line" in p.stderr
    assert SECRET not in p.stderr
    p = vault.run(["--relay-token=" + SECRET, "drain-once"], env=env, check=None)
    assert p.returncode == 2 and "never taken on the command line" in p.stderr
    env["ATTESTO_LOCAL_VAULT_RELAY_TOKEN"] = SECRET
    p = vault.run(["drain-once"], env=env, check=None)
    assert p.returncode == 2 and "never taken from the environment" in p.stderr
    assert SECRET not in p.stderr
    assert spool_rows(vault) == before


def spool_rows(vault):
    with sqlite3.connect(vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]) as c:
        return c.execute("SELECT id, state, attempts, last_error FROM items ORDER BY id").fetchall()
