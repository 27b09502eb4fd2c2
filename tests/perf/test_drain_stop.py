# SPDX-License-Identifier: Apache-2.0
"""drain-loop under a steady stream of completions: a SIGTERM must end it
promptly (leases released), not after the whole backlog has been relayed.
Before relay_run reported its extra fds on the path that returns without
waiting, a busy loop never saw its signalfd and drained everything first."""
import json
import signal
import subprocess
import time

import lvtest
from relaylib import PKI, Receiver, enqueue_batch, public_key_hex, relay_env

ITEMS = 2000


def accepted(receiver):
    """Complete lines of the receiver's events log (it may be mid-line)."""
    try:
        with open(receiver.events_log, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def counts(vault):
    return json.loads(vault.run(["status", "--json"], check=0).stdout)["counts"]


def test_sigterm_under_load_stops_before_the_backlog_is_drained(tmp_path):
    vault = lvtest.Vault(tmp_path / "vault")
    pki = PKI(tmp_path)
    receiver = Receiver(tmp_path / "receiver", pki, register=[("inst-test", public_key_hex(vault))])
    try:
        relay_env(vault, receiver, pki)
        batch = [(f"s{i % 64}", f"r{i:05d}", {"i": i}) for i in range(ITEMS)]
        assert enqueue_batch(vault, batch).returncode == 0
        proc = subprocess.Popen([lvtest.LV_BIN, "drain-loop", "--stop-grace-ms", "5000"],
                                env=vault.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while accepted(receiver) < 100:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "no deliveries"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        c = counts(vault)
        delivered = accepted(receiver)
        # Stopped with most of the backlog still queued; what was in flight
        # finished or went back to queued, nothing stays leased.
        assert c["relaying"] == 0
        assert c["receipted"] == delivered
        assert c["queued"] == ITEMS - delivered
        assert delivered < ITEMS // 2, f"{delivered} of {ITEMS} relayed after SIGTERM"
    finally:
        receiver.stop()
