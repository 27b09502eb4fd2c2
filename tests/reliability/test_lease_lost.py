# SPDX-License-Identifier: Apache-2.0
"""A lease that expires while its request is in flight (a stalled process,
here SIGSTOP) and is recovered by another process: the drain-loop must not
die when it cannot record the outcome (regression: it exited 1 with "lease
not held"), must not mark anything, and the item must still end receipted,
accepted by the receiver once."""
import json
import os
import signal
import subprocess
import sys
import time

import lvtest
from faultlib import NotifyListener

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "relay"))
from relaylib import PKI, Receiver, assert_log_agrees, public_key_hex, relay_env  # noqa: E402


def counts(v):
    return json.loads(v.run(["status", "--json"], check=0).stdout)["counts"]


def test_drain_loop_survives_a_lease_lost_in_flight(tmp_path):
    v = lvtest.Vault(tmp_path / "vault")
    pk = public_key_hex(v)
    (tmp_path / "pki").mkdir()
    pki = PKI(tmp_path / "pki")
    rec = Receiver(tmp_path / "receiver", pki, register=[("inst-test", pk)])
    try:
        relay_env(v, rec, pki)
        _run(v, rec, pk, tmp_path)
    finally:
        rec.stop()


def _run(v, rec, pk, tmp_path):
    lines = "".join(json.dumps({"stream_id": f"s{i}", "source_ref": f"r{i}",
                                "payload": {"i": i}}) + "\n" for i in range(3))
    assert v.run(["enqueue", "--jsonl", "-"], input=lines).returncode == 0
    # Every answer takes 1.5 s: the requests are in flight when the drain
    # is stopped.
    rec.set_faults("slow:delay=1500:count=inf")
    nl = NotifyListener(tmp_path)
    err_path = tmp_path / "drain.err"
    with open(err_path, "wb") as err:
        d = subprocess.Popen([lvtest.LV_BIN, "drain-loop", "--timeout-ms", "5000", "--lease-ms",
                              "6000", "--backoff-base-ms", "20"], env=nl.env(dict(v.env)),
                             stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while counts(v)["relaying"] < 3:
                assert time.monotonic() < deadline and d.poll() is None, err_path.read_text()
                time.sleep(0.05)
            d.send_signal(signal.SIGSTOP)
            time.sleep(6.5)  # the leases expire
            # Any spool_open returns expired leases to the queue.
            assert counts(v)["queued"] == 3
            rec.set_faults()
            d.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 60
            while counts(v)["receipted"] < 3:
                assert time.monotonic() < deadline, err_path.read_text()
                assert d.poll() is None, f"drain-loop died: {err_path.read_text()}"
                time.sleep(0.1)
        finally:
            if d.poll() is None:
                d.send_signal(signal.SIGCONT)
                d.terminate()
            rc = d.wait(30)
            nl.close()
    text = err_path.read_text()
    assert rc == 0, text
    assert "lease expired before the outcome was recorded" in text, text
    c = counts(v)
    assert c == {"queued": 0, "relaying": 0, "receipted": 3, "dead_letter": 0,
                 "quarantined": 0}, c
    logged = assert_log_agrees(v, rec, pk)
    assert len(logged) == 3
