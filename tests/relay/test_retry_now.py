# SPDX-License-Identifier: Apache-2.0
"""retry-now: queued items that wait for a retry become due now, in one
stream or in all, with their attempts kept; a running drain-loop relays them
at once; bad usage is refused with exit 2 and changes nothing. On a fresh
token and spool, against the reference receiver over TLS."""
import json
import os
import signal
import subprocess
import time

import pytest

import lvtest
from relaylib import drain_once, enqueue, event_id, show, wait_for

# A Retry-After far beyond any test's patience: without retry-now these items
# would not be tried again for ten minutes. Set in the receiver's fault file,
# which the tests empty when "the receiver is back".
LONG_WAIT = "503:retry-after=600:count=inf"


def retry_now(vault, *args, check=0):
    p = vault.run(["retry-now", *args], check=check)
    return json.loads(p.stdout) if check == 0 else p


def waiting_s(vault, ref):
    """Seconds until the item's next attempt, as `show` reports it."""
    it = show(vault, event_id(ref))
    assert it["state"] == "queued", it
    due = time.mktime(time.strptime(it["next_attempt_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    return due - time.time()


def test_one_stream_becomes_due_and_the_other_keeps_waiting(vault, start_receiver):
    receiver = start_receiver(vault)
    receiver.set_faults(LONG_WAIT)
    enqueue(vault, "s1", "a1")
    enqueue(vault, "s1", "a2")
    enqueue(vault, "s2", "b1")
    drain_once(vault, check=7)  # both heads refused with Retry-After: 600
    assert waiting_s(vault, "a1") > 500 and waiting_s(vault, "b1") > 500
    receiver.set_faults()  # the receiver is back

    # Nothing was due: a drain pass does nothing.
    _, summary = drain_once(vault, check=0)
    assert receiver.event_count() == 0, summary

    assert retry_now(vault, "--stream-id", "s1") == {"due_now": 1}  # s1's head
    drain_once(vault, check=0)
    assert [show(vault, event_id(r))["state"] for r in ("a1", "a2", "b1")] == \
        ["receipted", "receipted", "queued"]
    # The attempt was kept: a1 was delivered at its second attempt.
    assert show(vault, event_id("a1"))["attempts"] == 2
    assert waiting_s(vault, "b1") > 500

    assert retry_now(vault, "--all") == {"due_now": 1}
    drain_once(vault, check=0)
    assert show(vault, event_id("b1"))["state"] == "receipted"
    assert show(vault, event_id("b1"))["attempts"] == 2
    # Nothing left waiting.
    assert retry_now(vault, "--all") == {"due_now": 0}


def test_dead_letters_and_receipted_items_are_not_touched(vault, start_receiver):
    receiver = start_receiver(vault)
    receiver.set_faults("400:count=1")
    enqueue(vault, "s1", "dead")
    drain_once(vault, check=7)
    assert show(vault, event_id("dead"))["state"] == "dead_letter"
    receiver.set_faults()
    enqueue(vault, "s2", "done")
    drain_once(vault, check=0)
    assert retry_now(vault, "--all") == {"due_now": 0}
    assert show(vault, event_id("dead"))["state"] == "dead_letter"
    assert show(vault, event_id("done"))["state"] == "receipted"


def test_a_running_drain_loop_relays_them_at_once(vault, start_receiver, tmp_path):
    receiver = start_receiver(vault)
    receiver.set_faults(LONG_WAIT)
    enqueue(vault, "s1", "x")
    err = open(tmp_path / "loop.stderr", "w")
    loop = subprocess.Popen([lvtest.LV_BIN, "drain-loop", "--metrics-file", "none"],
                            env=vault.env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: show(vault, event_id("x"))["attempts"] == 1, 30,
                 what="the first, refused attempt")
        assert waiting_s(vault, "x") > 500
        receiver.set_faults()
        t0 = time.monotonic()
        assert retry_now(vault, "--all") == {"due_now": 1}
        # Well inside the 600 s the receiver asked for: the loop was woken.
        wait_for(lambda: show(vault, event_id("x"))["state"] == "receipted", 30,
                 what="delivery after retry-now")
        took = time.monotonic() - t0
        assert took < 10, f"delivered {took:.1f} s after retry-now"
        assert show(vault, event_id("x"))["attempts"] == 2
    finally:
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(timeout=30) == 0
        err.close()


@pytest.mark.parametrize("args,needle", [
    ([], "give --all or --stream-id ID"),
    (["--all", "--stream-id", "s1"], "give --all or --stream-id ID"),
    (["--stream-id", "bad id"], "--stream-id: bad id: must be 1-128 bytes"),
    (["--stream-id", "s" * 129], "must be 1-128 bytes"),
    (["--stream-id"], "--stream-id"),
    (["--everything"], "--everything"),
])
def test_bad_usage_exits_2_and_changes_nothing(vault, start_receiver, args, needle):
    start_receiver(vault, faults=[LONG_WAIT])
    enqueue(vault, "s1", "a")
    drain_once(vault, check=7)
    before = show(vault, event_id("a"))
    p = retry_now(vault, *args, check=2)
    assert needle in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert show(vault, event_id("a")) == before
