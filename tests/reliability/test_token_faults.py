# SPDX-License-Identifier: Apache-2.0
"""Token faults in the middle of enqueue, drain-loop and witness runs,
injected by the PKCS#11 shim (tests/shim) over a real SoftHSM token: a
device pulled, a session that vanishes, a lost login, a transient general
error. The vault either recovers (reopens the session, logs in again,
unwraps the DEK again) or stops taking work; nothing is lost, nothing is
marked delivered, quarantined or witnessed wrongly, and the systemd STATUS
says what happened."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

import lvtest
from faultlib import ClonedVault, NotifyListener, Shim, spool_rows

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "relay"))
from relaylib import PKI, Receiver, assert_log_agrees, public_key_hex, relay_env, verify_envelope  # noqa: E402

# What a process may report for a fault: the fault itself, or (enqueue signs
# and seals, drain verifies rows, on several threads) what another call met
# right after it, e.g. the DEK handle gone with the sessions a pulled device
# closed.
CONSEQUENCES = ("CKR_SESSION_HANDLE_INVALID", "CKR_SESSION_CLOSED", "CKR_OBJECT_HANDLE_INVALID",
                "CKR_KEY_HANDLE_INVALID", "CKR_USER_NOT_LOGGED_IN", "CKR_DEVICE_REMOVED")


def names_fault(line, fault):
    return fault in line or any(c in line for c in CONSEQUENCES)


N_DRAIN = 16  # items in the drain-loop tests (each lease decrypts two rows)
FAULTS = ["CKR_DEVICE_REMOVED", "CKR_SESSION_HANDLE_INVALID", "CKR_USER_NOT_LOGGED_IN",
          "CKR_GENERAL_ERROR"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One provisioned token; each test gets its own copy (ClonedVault)."""
    v = lvtest.Vault(tmp_path_factory.mktemp("template"))
    v.pk = public_key_hex(v)
    return v


@pytest.fixture
def vault(tmp_path, template):
    v = ClonedVault(template, tmp_path / "vault")
    v.pk = template.pk
    v.shim = Shim(v)
    v.db = v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]
    yield v
    # scripts/reliability adds up the faults injected over the whole matrix.
    tally = os.environ.get("LV_SHIM_TALLY")
    if tally:
        n = len(v.shim.injected())
        old = int(open(tally).read() or 0) if os.path.exists(tally) else 0
        with open(tally, "w") as f:
            f.write(str(old + n))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


def batch(n, prefix="b", streams=3):
    return "".join(json.dumps({"stream_id": f"s{i % streams}", "source_ref": f"{prefix}{i}",
                               "payload": {"i": i, "prefix": prefix}}) + "\n" for i in range(n))


def envelopes(vault):
    """event_id -> stored envelope body, through show --json."""
    out = {}
    for row in spool_rows(vault.db):
        p = vault.run(["show", row[0], "--json"], check=0)
        out[row[0]] = json.loads(p.stdout)
    return out


def assert_all_signed(vault, n_expected):
    rows = spool_rows(vault.db)
    assert len(rows) == n_expected
    for ev, shown in envelopes(vault).items():
        body = shown["envelope"] if isinstance(shown["envelope"], str) else json.dumps(
            shown["envelope"], separators=(",", ":"), sort_keys=True)
        assert hashlib.sha256(body.encode()).hexdigest() == shown["envelope_hash"], ev
        verify_envelope(body, vault.pk)


# ---- enqueue --------------------------------------------------------------------
#
# The token layer reports an outage and does not log in again behind the
# caller's back (docs/token.md); enqueue, a short-lived command, stops: exit 5
# naming the fault, the group it was in rolled back, earlier groups whole.
# Sources re-run it (enqueue is idempotent).

# Every fault on C_Sign; on C_Encrypt (sealing the payload) one of them, the
# rest of that matrix runs in the relay soak.
@pytest.mark.parametrize("func,fault", [("C_Sign", f) for f in FAULTS] +
                         [("C_Encrypt", "CKR_SESSION_HANDLE_INVALID")])
def test_enqueue_fault_mid_batch_stores_nothing_partial(vault, func, fault):
    assert vault.run(["enqueue", "--jsonl", "-"], input=batch(3, "e")).returncode == 0
    before = spool_rows(vault.db)
    vault.shim.set_rules(f"{func} {fault} after=5 times=1")
    p = vault.run(["enqueue", "--jsonl", "-"], input=batch(10))
    assert len(vault.shim.injected(f" {func} {fault}")) == 1, "the fault was injected once"
    if p.returncode == 0:  # recovered within the run
        assert len(p.stdout.splitlines()) == 10
    else:
        assert p.returncode == 5, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("enqueue: "), p.stderr
        assert names_fault(lines[0], fault), lines[0]
        assert p.stdout == "" and spool_rows(vault.db) == before
        vault.shim.clear()
        p = vault.run(["enqueue", "--jsonl", "-"], input=batch(10))
        assert p.returncode == 0, p.stderr
    assert [json.loads(l)["status"] for l in p.stdout.splitlines()] == ["queued"] * 10
    assert_all_signed(vault, 13)


def test_enqueue_stops_cleanly_while_the_token_stays_away(vault):
    fault = "CKR_DEVICE_REMOVED"
    # 300 items: the first group of 256 commits, then the token goes away
    # for good during the second.
    vault.shim.set_rules(f"C_Sign {fault} after=270 times=0")
    p = vault.run(["enqueue", "--jsonl", "-"], input=batch(300))
    assert vault.shim.injected(fault), "the fault was injected"
    assert p.returncode == 5, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("enqueue: "), p.stderr
    assert names_fault(lines[0], fault), lines[0]
    printed = [json.loads(l)["event_id"] for l in p.stdout.splitlines()]
    stored = [r[0] for r in spool_rows(vault.db)]
    assert printed == stored, "what was printed is what was stored"
    assert len(stored) == 256
    vault.shim.clear()
    p = vault.run(["enqueue", "--jsonl", "-"], input=batch(300))
    assert p.returncode == 0, p.stderr
    st = [json.loads(l)["status"] for l in p.stdout.splitlines()]
    assert st == ["duplicate"] * len(stored) + ["queued"] * (300 - len(stored))
    assert_all_signed(vault, 300)


# ---- drain-loop ------------------------------------------------------------------

class DrainLoop:
    def __init__(self, vault, tmp_path, *args, env=None):
        os.makedirs(str(tmp_path), exist_ok=True)
        self.notify = NotifyListener(tmp_path)
        env = self.notify.env(dict(vault.env, **(env or {})))
        self.stderr_path = os.path.join(str(tmp_path), "drain.stderr")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [lvtest.LV_BIN, "drain-loop", "--backoff-base-ms", "20", *args], env=env,
            stdout=subprocess.DEVNULL, stderr=self._err)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        self.notify.close()
        return self.proc.returncode

    def stderr(self):
        with open(self.stderr_path) as f:
            return f.read()


def counts(vault):
    return json.loads(vault.run(["status", "--json"], check=0).stdout)["counts"]


def wait_receipted(vault, n, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = counts(vault)
        if c["receipted"] == n:
            return c
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"not all receipted: {counts(vault)}")


@pytest.fixture
def relay_vault(vault, tmp_path, pki):
    rec = Receiver(tmp_path / "receiver", pki, register=[("inst-test", vault.pk)])
    relay_env(vault, rec, pki)
    vault.receiver = rec
    # Opt-in payload: every envelope is sealed too, so leasing decrypts both
    # the envelope and the payload on the token.
    p = vault.run(["enqueue", "--jsonl", "-", "--include-payload"], input=batch(N_DRAIN, "d", 4))
    assert p.returncode == 0, p.stderr
    yield vault
    rec.stop()


def run_until_receipted(v, tmp_path, args=(), timeout=90):
    d = DrainLoop(v, tmp_path, *args)
    try:
        wait_receipted(v, N_DRAIN, timeout, d.proc)
    except AssertionError as e:
        d.stop()
        raise AssertionError(f"{e}\ndrain-loop exit {d.proc.returncode}: {d.stderr()}") from e
    finally:
        rc = d.stop()
    return rc, d.notify.fields("STATUS"), d.stderr()


@pytest.mark.parametrize("fault", FAULTS)
def test_drain_loop_recovers_from_a_decrypt_fault_and_marks_nothing_wrongly(
        relay_vault, tmp_path, fault):
    v = relay_vault
    v.shim.set_rules(f"C_Decrypt {fault} after=12 times=1")
    rc, status, err = run_until_receipted(v, tmp_path, ["--max-in-flight", "4"])
    assert len(v.shim.injected(f" C_Decrypt {fault}")) == 1
    # One process did it all: no exit, no restart.
    assert rc == 0, err
    outage = [x for x in status if x.startswith("token unavailable: ")]
    if fault == "CKR_GENERAL_ERROR":
        # Transient, and the DEK passes its self-test: the row is simply
        # decrypted again (regression: it used to be quarantined).
        assert not outage, status
    else:
        # The session, the login or the device was lost: the drain stopped
        # taking work, said so, and reopened the token (new session, login,
        # DEK unwrapped again).
        assert outage and names_fault(outage[0], fault) and "reopening" in outage[0], status
    c = counts(v)
    # A fault of the token never condemns a row.
    assert c["quarantined"] == 0 and c["dead_letter"] == 0 and c["receipted"] == N_DRAIN, c
    assert_log_agrees(v, v.receiver, v.pk)


def test_drain_loop_recovers_when_the_login_is_lost_between_calls(relay_vault, tmp_path):
    """Regression: a login lost between two calls (the shim logs out, the call
    itself passes) is revealed only by the next C_DecryptInit, which SoftHSM
    answers CKR_OBJECT_HANDLE_INVALID (the DEK was an object of the login).
    drain-loop took that for a missing key and exited 5, which the unit does
    not restart: relaying stopped. It is an outage like the others."""
    v = relay_vault
    v.shim.set_rules("C_DecryptInit CKR_OK effect=logout after=12 times=1")
    rc, status, err = run_until_receipted(v, tmp_path, ["--max-in-flight", "4"])
    assert len(v.shim.injected(" C_DecryptInit CKR_OK logout")) == 1
    assert rc == 0, err
    outage = [x for x in status if x.startswith("token unavailable: ")]
    assert outage and "reopening" in outage[0], status
    assert "CKR_OBJECT_HANDLE_INVALID" in outage[0] or "CKR_KEY_HANDLE_INVALID" in outage[0] \
        or "CKR_USER_NOT_LOGGED_IN" in outage[0], outage[0]
    c = counts(v)
    assert c["quarantined"] == 0 and c["dead_letter"] == 0 and c["receipted"] == N_DRAIN, c
    assert_log_agrees(v, v.receiver, v.pk)


def test_drain_loop_stops_taking_work_while_the_token_is_gone(relay_vault, tmp_path):
    v = relay_vault
    # After startup: token_open's capability probe makes 15 of the calls
    # (docs/token.md), so the fault lands where it did before the probe.
    v.shim.set_rules("* CKR_DEVICE_REMOVED after=55 times=0")
    d = DrainLoop(v, tmp_path, "--max-in-flight", "2")
    try:
        d.notify.wait_for("STATUS", lambda x: x.startswith("token unavailable: "), 60,
                          "token unavailable")
        time.sleep(1.5)
        assert d.proc.poll() is None, "the service stays up while the token is gone"
        c = counts(v)
        # Not taking work: nothing leased, nothing quarantined or
        # dead-lettered by the outage; what was receipted the receiver
        # really accepted.
        assert c["relaying"] == 0 and c["quarantined"] == 0 and c["dead_letter"] == 0, c
        assert c["receipted"] < N_DRAIN, c
        assert_log_agrees(v, v.receiver, v.pk)
        v.shim.clear()  # the token is back
        wait_receipted(v, N_DRAIN, 90, d.proc)
    finally:
        rc = d.stop()
    assert rc == 0, d.stderr()
    assert names_fault([x for x in d.notify.fields("STATUS")
                        if x.startswith("token unavailable: ")][0], "CKR_DEVICE_REMOVED")
    assert d.notify.fields("READY").count("1") >= 2, "READY again after the reopen"
    c = counts(v)
    assert c["quarantined"] == 0 and c["dead_letter"] == 0 and c["receipted"] == N_DRAIN, c
    assert_log_agrees(v, v.receiver, v.pk)


def test_drain_loop_stops_for_good_when_the_reopened_token_refuses_the_pin(relay_vault, tmp_path):
    v = relay_vault
    # The service reads its own copy of the PIN, which an operator then
    # breaks while it runs.
    pin_file = os.path.join(str(tmp_path), "service-pin")
    with open(pin_file, "w") as f:
        f.write(open(v.env["ATTESTO_LOCAL_VAULT_PIN_FILE"]).read())
    d = DrainLoop(v, tmp_path, "--max-in-flight", "2",
                  env={"ATTESTO_LOCAL_VAULT_PIN_FILE": pin_file})
    try:
        wait_receipted(v, N_DRAIN, 60, d.proc)
        with open(pin_file, "w") as f:
            f.write("000000\n")
        v.shim.set_rules("C_Decrypt CKR_DEVICE_REMOVED times=1")
        # New work wakes it; the device "goes away" on the first decrypt;
        # the reopen tries the (now wrong) PIN once and stops, never loops.
        p = v.run(["enqueue", "--jsonl", "-", "--include-payload"], input=batch(3, "late"))
        assert p.returncode == 0, p.stderr
        d.proc.wait(60)
    finally:
        rc = d.stop()
    err = d.stderr()
    assert rc == 5, err
    assert "CKR_PIN_INCORRECT" in err and "not retried" in err, err
    assert err.count("CKR_PIN_INCORRECT") == 1, "one attempt, never retried"
    assert d.notify.fields("STATUS")[-1].startswith("failed: "), d.notify.fields("STATUS")
    c = counts(v)
    assert c["relaying"] == 0 and c["quarantined"] == 0 and c["dead_letter"] == 0, c
    assert c["queued"] == 3 and c["receipted"] == N_DRAIN, c


# ---- witness ------------------------------------------------------------------------

H = [hashlib.sha256(f"cp{i}".encode()).hexdigest() for i in range(40)]


def verify_witness(doc, pk_hex):
    """Independent check (python-cryptography) of a witness receipt."""
    st = doc["statement"]
    canon = json.dumps(st, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert hashlib.sha256(canon).hexdigest() == doc["statement_hash"]
    ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(pk_hex)).verify(
        bytes.fromhex(doc["signature"]["signature"]),
        b"attesto.local-vault.witness-receipt.v1\n" + canon)


def checkpoint(v, seq, **kw):
    args = ["witness-checkpoint", "--tenant-id", "t1", "--stream-id", "ws", "--checkpoint-id",
            f"cp-{seq}", "--checkpoint-seq-no", str(seq), "--checkpoint-hash", H[seq]]
    if seq > 1:
        args += ["--previous-checkpoint-hash", H[seq - 1]]
    return v.run(args, **kw)


@pytest.mark.parametrize("fault", FAULTS)
def test_witness_checkpoint_fault_moves_no_state(vault, fault):
    for seq in (1, 2):
        assert checkpoint(vault, seq).returncode == 0
    vault.shim.set_rules(f"C_Sign {fault} times=1")
    p = checkpoint(vault, 3)
    assert len(vault.shim.injected(f" C_Sign {fault}")) == 1
    if p.returncode != 0:
        # Refused: exit 5 naming the fault, nothing printed, nothing stored.
        assert p.returncode == 5 and fault in p.stderr and p.stdout == "", p
        vault.shim.clear()
        p = checkpoint(vault, 3)
        assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    # Accepted now (not "replayed": the failed run stored nothing), and
    # signed by the right key.
    assert doc["result"] == "accepted"
    assert doc["public_key"]["public_key_hex"] == vault.pk
    verify_witness(doc, vault.pk)


def test_witness_checkpoint_refused_while_the_token_is_gone_moves_nothing(vault):
    for seq in (1, 2):
        assert checkpoint(vault, seq).returncode == 0
    vault.shim.set_rules("C_Sign CKR_DEVICE_REMOVED times=0")
    p = checkpoint(vault, 3)
    assert p.returncode == 5, p.stderr
    assert "CKR_DEVICE_REMOVED" in p.stderr and p.stdout == ""
    vault.shim.clear()
    # The head did not move: 3 is still the next checkpoint, not a replay.
    p = checkpoint(vault, 3)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["result"] == "accepted"


# ---- a token absent for a moment at start ------------------------------------------

def test_token_absent_for_a_moment_at_start_is_waited_for(vault):
    # Regression: a process starting while another logged in to the same
    # SoftHSM token (which rewrites token.object) found no token and exited 5
    # at once; the crash soak saw enqueue and drain-loop fail this way.
    vault.shim.set_rules("* CKR_TOKEN_NOT_PRESENT times=0 effect=none")
    p = subprocess.Popen([lvtest.LV_BIN, "public-key", "--format", "hex"], env=vault.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not vault.shim.injected("CKR_TOKEN_NOT_PRESENT") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert vault.shim.injected("CKR_TOKEN_NOT_PRESENT"), "the token was absent at first"
    vault.shim.clear()  # it comes back
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.strip() == vault.pk


def test_token_that_stays_absent_is_reported_after_a_bounded_wait(vault):
    vault.shim.set_rules("* CKR_TOKEN_NOT_PRESENT times=0 effect=none")
    t0 = time.monotonic()
    p = vault.run(["public-key", "--format", "hex"])
    assert p.returncode == 5, p.stderr
    assert p.stderr.startswith("public-key: no token matches "), p.stderr
    assert time.monotonic() - t0 < 30
