# SPDX-License-Identifier: Apache-2.0
"""drain-once: configuration refusals, delivery with verified receipts, TLS
failures, Retry-After, max_attempts, 409 and other 4xx, and the 401/403
pause that keeps every stream waiting without burning attempts."""
import json
import os
import time

import pytest

import lvtest
from relaylib import (assert_log_agrees, drain_once, enqueue, event_id, items, show, status, counts,
                      verify_receipt)


# ---- refusals at start: exit 2, nothing touched ----

# (These run without a token: the refusal must come before the token is
# touched, and the module path given does not even exist.)

@pytest.mark.parametrize("verb", ["drain-once", "drain-loop"])
def test_plain_http_relay_url_is_refused_at_start(bare_env, verb):
    bare_env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = "http://127.0.0.1:9/v2/local-vault/installations/inst-test/events"
    p = lvtest.run([verb], env=bare_env, check=2, timeout=20)
    assert "--relay-url" in p.stderr and "https" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not os.path.exists(bare_env["ATTESTO_LOCAL_VAULT_SPOOL_DB"])


def test_plain_http_relay_url_is_refused_with_a_token(vault):
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = "http://127.0.0.1:9/x"
    enqueue(vault, "s", "kept")
    p = vault.run(["drain-once"], check=2)
    assert "--relay-url" in p.stderr and "https" in p.stderr
    assert show(vault, event_id("kept"))["attempts"] == 0


@pytest.mark.parametrize("verb", ["drain-once", "drain-loop"])
def test_missing_relay_url_is_refused(bare_env, verb):
    bare_env.pop("ATTESTO_LOCAL_VAULT_RELAY_URL", None)
    p = lvtest.run([verb], env=bare_env, check=2)
    assert "--relay-url: required" in p.stderr


def test_unreadable_ca_file_is_refused(bare_env, tmp_path):
    bare_env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = "https://127.0.0.1:9/x"
    bare_env["ATTESTO_LOCAL_VAULT_CA_FILE"] = str(tmp_path / "no-such-ca.pem")
    p = lvtest.run(["drain-once"], env=bare_env, check=2)
    assert "--ca-file" in p.stderr and "no-such-ca.pem" in p.stderr


@pytest.mark.parametrize("args,needle", [
    (["--max-in-flight", "0"], "--max-in-flight: 0: must be an integer from 1 to 1024"),
    (["--backoff-base-ms", "fast"], "--backoff-base-ms: fast: must be an integer"),
    (["--timeout-ms", "5"], "--timeout-ms: 5: must be an integer from 100"),
    (["--max-attempts", "-1"], "--max-attempts: -1: must be an integer from 1"),
    (["--timeout-ms", "60000", "--lease-ms", "30000"], "--lease-ms: 30000: must be longer than --timeout-ms"),
    (["--stop-grace-ms", "10"], "--stop-grace-ms: unknown option"),
    (["--frobnicate"], "--frobnicate: unknown option"),
    (["extra"], "extra: unexpected argument"),
])
def test_bad_drain_once_options_exit_2(bare_env, args, needle):
    bare_env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = "https://127.0.0.1:9/x"
    p = lvtest.run(["drain-once", *args], env=bare_env, check=2)
    assert needle in p.stderr
    assert not os.path.exists(bare_env["ATTESTO_LOCAL_VAULT_SPOOL_DB"])


# ---- delivery ----

def test_one_pass_delivers_with_verified_receipts(vault, start_receiver):
    receiver = start_receiver(vault)
    for s, r in [("str_1", "a"), ("str_1", "b"), ("str_2", "c")]:
        enqueue(vault, s, r)
    p, s = drain_once(vault)
    assert p.returncode == 0, p.stderr
    assert s == {"delivered": 3, "retry_scheduled": 0, "dead_lettered": 0, "remaining": 0}
    assert list(json.loads(p.stdout)) == ["delivered", "retry_scheduled", "dead_lettered",
                                          "remaining"]
    logged = assert_log_agrees(vault, receiver, vault.pk)
    assert sorted(logged) == sorted(event_id(r) for r in "abc")
    for r in "abc":
        item = show(vault, event_id(r))
        assert item["state"] == "receipted" and item["attempts"] == 1
        receipt = item["receipt"]
        receipt = json.loads(receipt) if isinstance(receipt, str) else receipt
        assert receipt["event_id"] == event_id(r)
        assert receipt["event_hash"] == item["envelope_hash"]
        verify_receipt(receipt, receiver)
    # seq_no per stream, in enqueue order
    seqs = {(e["stream_id"], e["event_id"]): e["seq_no"] for e in receiver.events()}
    assert seqs[("str_1", event_id("a"))] == 1 and seqs[("str_1", event_id("b"))] == 2
    assert seqs[("str_2", event_id("c"))] == 1
    # a second pass has nothing to do
    p, s = drain_once(vault)
    assert p.returncode == 0
    assert s == {"delivered": 0, "retry_scheduled": 0, "dead_lettered": 0, "remaining": 0}


# ---- TLS: each failure is a failed attempt, the item stays queued ----

def _assert_failed_attempt(vault, receiver, reason, *args):
    p, s = drain_once(vault, *args)
    assert p.returncode == 7, p.stderr
    assert s["delivered"] == 0 and s["retry_scheduled"] == 1 and s["remaining"] == 1
    item = show(vault, event_id("tls-1"))
    assert item["state"] == "queued" and item["attempts"] == 1
    assert item["last_error"] == reason
    assert receiver.events() == []


def test_wrong_ca_fails_the_attempt(vault, start_receiver, pki):
    receiver = start_receiver(vault)
    vault.env["ATTESTO_LOCAL_VAULT_CA_FILE"] = pki.wrong_ca
    enqueue(vault, "s", "tls-1")
    _assert_failed_attempt(vault, receiver, "tls_verify_failed")


def test_wrong_host_name_fails_the_attempt(vault, start_receiver, pki):
    # Signed by the right CA, but for other.example, not 127.0.0.1.
    receiver = start_receiver(vault, cert=pki.other_cert, key=pki.other_key)
    enqueue(vault, "s", "tls-1")
    _assert_failed_attempt(vault, receiver, "tls_verify_failed")


def test_redirect_to_http_fails_the_attempt(vault, start_receiver):
    receiver = start_receiver(vault, faults=["redirect:count=inf"])
    enqueue(vault, "s", "tls-1")
    _assert_failed_attempt(vault, receiver, "redirect_refused")


def test_system_trust_store_does_not_trust_the_test_ca(vault, start_receiver):
    receiver = start_receiver(vault)
    vault.env.pop("ATTESTO_LOCAL_VAULT_CA_FILE")
    enqueue(vault, "s", "tls-1")
    # Loading the whole system bundle is slow under ASan on a busy machine;
    # the connect timeout covers the handshake, so give it room.
    _assert_failed_attempt(vault, receiver, "tls_verify_failed", "--connect-timeout-ms", "120000",
                           "--timeout-ms", "150000")


def test_pinned_public_key(vault, start_receiver, pki):
    receiver = start_receiver(vault)
    enqueue(vault, "s", "tls-1")
    vault.env["ATTESTO_LOCAL_VAULT_PINNED_PUBLIC_KEY"] = "sha256//" + "A" * 43 + "="
    _assert_failed_attempt(vault, receiver, "tls_pin_mismatch")
    vault.env["ATTESTO_LOCAL_VAULT_PINNED_PUBLIC_KEY"] = pki.pin()
    time.sleep(0.1)
    p, s = drain_once(vault, check=0)
    assert s["delivered"] == 1


# ---- Retry-After, max_attempts, 409 and other 4xx ----

@pytest.mark.parametrize("form", ["retry-after", "retry-after-date"])
def test_retry_after_is_honoured(vault, start_receiver, form):
    # 8 s: long enough that the checks below run inside it even on a slow,
    # busy machine (sanitizer builds), short enough for the suite.
    start_receiver(vault, faults=[f"503:{form}=8"])
    enqueue(vault, "s", "ra")
    t0 = time.time()
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["retry_scheduled"] == 1
    item = show(vault, event_id("ra"))
    assert item["last_error"] == "http_503"
    # The backoff alone (base 5 ms) would allow a retry at once; the header
    # pushes it back: a pass now does not touch the item.
    p, s = drain_once(vault)
    assert s == {"delivered": 0, "retry_scheduled": 0, "dead_lettered": 0, "remaining": 1}
    assert show(vault, event_id("ra"))["attempts"] == 1
    # An HTTP-date has one-second resolution: at least 6 s must pass.
    time.sleep(max(0.0, t0 + 6.0 - time.time()))
    p, s = drain_once(vault)
    while s["delivered"] == 0 and time.time() < t0 + 20:
        assert show(vault, event_id("ra"))["attempts"] == 1
        time.sleep(0.2)
        p, s = drain_once(vault)
    assert s["delivered"] == 1
    assert time.time() - t0 >= 6.0


def test_max_attempts_gives_dead_letter(vault, start_receiver):
    start_receiver(vault, faults=["500:count=inf"])
    enqueue(vault, "s", "doomed")
    enqueue(vault, "s", "behind")
    for attempt in (1, 2):
        p, s = drain_once(vault, "--max-attempts", "3")
        assert p.returncode == 7 and s["retry_scheduled"] == 1 and s["dead_lettered"] == 0
        assert show(vault, event_id("doomed"))["attempts"] == attempt
        # per-stream order: the item behind never overtakes the head
        assert show(vault, event_id("behind"))["attempts"] == 0
        time.sleep(0.2)
    p, s = drain_once(vault, "--max-attempts", "3")
    assert p.returncode == 7 and s["dead_lettered"] == 1
    item = show(vault, event_id("doomed"))
    assert item["state"] == "dead_letter" and item["attempts"] == 3
    assert item["last_error"] == "http_500"
    assert counts(vault)["dead_letter"] == 1


def test_409_dead_letters_with_receiver_conflict(vault, start_receiver):
    start_receiver(vault, faults=["409"])
    enqueue(vault, "s", "c1")
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["dead_lettered"] == 1
    item = show(vault, event_id("c1"))
    assert item["state"] == "dead_letter" and item["last_error"] == "receiver_conflict"


@pytest.mark.parametrize("code", [400, 404, 422])
def test_other_4xx_dead_letters(vault, start_receiver, code):
    start_receiver(vault, faults=[str(code)])
    enqueue(vault, "s", "x")
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["dead_lettered"] == 1
    item = show(vault, event_id("x"))
    assert item["state"] == "dead_letter" and item["last_error"] == f"http_{code}"


def test_changed_envelope_for_a_known_event_is_a_receiver_conflict(vault, start_receiver,
                                                                   tmp_path):
    """A real 409: the same event id relayed before with another payload
    (a second spool on the same token and installation)."""
    receiver = start_receiver(vault)
    enqueue(vault, "s", "dup", payload={"v": 1})
    drain_once(vault, check=0)
    vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = str(tmp_path / "second.sqlite3")
    enqueue(vault, "s", "dup", payload={"v": 2})
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["dead_lettered"] == 1
    assert show(vault, event_id("dup"))["last_error"] == "receiver_conflict"
    assert len(receiver.events()) == 1


# ---- 401/403: pause everything, keep attempts, resume ----

@pytest.mark.parametrize("code", [401, 403])
def test_unauthorised_pauses_all_streams_without_burning_attempts(vault, start_receiver, code):
    receiver = start_receiver(vault)
    # Retry-After stretches the pause (1 s at least otherwise) so that the
    # checks below run inside it even on a slow, busy machine.
    receiver.set_faults(f"{code}:count=inf:retry-after=6")
    for i in range(4):
        enqueue(vault, f"s{i}", f"p{i}")
    p, s = drain_once(vault, "--max-in-flight", "1")
    assert p.returncode == 7, p.stderr
    assert s["paused"]["reason"] == f"http_{code}"
    assert s["delivered"] == 0 and s["retry_scheduled"] == 1 and s["remaining"] == 4
    # one request was answered; the pause stopped the other streams
    tried = [i for i in items(vault) if i["last_error"]]
    assert len(tried) == 1 and tried[0]["last_error"] == f"http_{code}"
    assert all(i["attempts"] == 0 and i["state"] == "queued" for i in items(vault))
    st = status(vault)
    assert st["pause_reason"] == f"http_{code}" and st["paused_until"]
    # a pass during the pause sends nothing
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["paused"] and s["delivered"] == 0
    assert receiver.events() == []
    # the receiver authorises us again; after the pause everything goes
    receiver.set_faults()
    deadline = time.time() + 30
    while True:
        p, s = drain_once(vault)
        if not s.get("paused") or time.time() > deadline:
            break
        time.sleep(0.05)
    assert p.returncode == 0, p.stdout + p.stderr
    assert s["delivered"] == 4 and s["remaining"] == 0
    assert all(i["attempts"] == 1 for i in items(vault))  # only the delivering attempt
    assert status(vault)["pause_reason"] is None
    assert_log_agrees(vault, receiver, vault.pk)


def test_unregistered_installation_pauses(vault, start_receiver):
    receiver = start_receiver(vault, register=[])
    enqueue(vault, "s", "u")
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["paused"]["reason"] == "http_403"
    assert show(vault, event_id("u"))["attempts"] == 0
    assert receiver.events() == []


def test_wrong_signing_key_registered_pauses(vault, start_receiver):
    other = "11" * 32  # some other installation key
    start_receiver(vault, register=[("inst-test", other)])
    enqueue(vault, "s", "k")
    p, s = drain_once(vault)
    assert p.returncode == 7 and s["paused"]["reason"] == "http_401"
    assert show(vault, event_id("k"))["attempts"] == 0
