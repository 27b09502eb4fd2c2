# SPDX-License-Identifier: Apache-2.0
"""Token errors in the metrics: a fault injected by the PKCS#11 shim
(tests/shim, over the real SoftHSM token) is counted in drain-loop's
textfile and at witness-serve's /metrics, the exposition still passes
promtool, and the work done after the token came back is counted too."""
import json
import os
import signal
import sys
import time

from relaylib import wait_for
from test_metrics import promtool_check, read, samples, start_loop
from witnesslib import Server, h, request_body

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reliability"))
from faultlib import Shim  # noqa: E402


def receipted(vault):
    p = vault.run(["status", "--json"], check=0)
    return json.loads(p.stdout)["counts"]["receipted"]


def test_drain_loop_counts_a_token_error_and_goes_on(vault, receiver, tmp_path):
    n = 6
    # Opt-in payload: the envelopes are sealed, so leasing decrypts rows.
    lines = "".join(json.dumps({"stream_id": f"s{i % 3}", "source_ref": f"r{i}",
                                "payload": {"i": i}}) + "\n" for i in range(n))
    vault.run(["enqueue", "--jsonl", "-", "--include-payload"], input=lines, check=0)
    shim = Shim(vault)
    # The device "goes away" on one decrypt of a leased row: the drain stops
    # taking work, reopens the token and delivers the rest.
    shim.set_rules("C_Decrypt CKR_DEVICE_REMOVED after=2 times=1")
    path = str(tmp_path / "m.prom")
    proc = start_loop(vault, "--metrics-file", path, "--max-in-flight", "2")
    try:
        wait_for(lambda: samples(read(path)).get("attesto_relay_deliveries_total", {}).get("") == n,
                 60, what=f"{n} deliveries in the metrics file")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(shim.injected(" C_Decrypt CKR_DEVICE_REMOVED")) == 1, "the fault was injected"
    assert "token unavailable" in err, err
    text = read(path)
    promtool_check(text)
    s = samples(text)
    assert s["attesto_relay_token_errors_total"][""] >= 1
    assert s["attesto_relay_deliveries_total"][""] == n
    assert s["attesto_relay_items"]['{state="receipted"}'] == n
    assert s["attesto_relay_items"]['{state="quarantined"}'] == 0
    shim.clear()
    assert receipted(vault) == n


def test_witness_endpoint_counts_a_token_failure(vault):
    shim = Shim(vault)
    server = Server(vault)
    try:
        shim.set_rules("C_Sign CKR_DEVICE_REMOVED times=1")
        status, _, body = server.post(request_body("t", "s", "c1", 1, h(1)))
        assert status == 503 and b"token_unavailable" in body, body
        assert len(shim.injected(" C_Sign CKR_DEVICE_REMOVED")) == 1
        _, _, m = server.request("GET", "/metrics")
        text = m.decode()
        promtool_check(text)
        s = samples(text)
        assert s["attesto_witness_token_failures_total"][""] == 1
        assert s["attesto_witness_token_up"][""] == 0
        assert s["attesto_witness_decisions_total"]['{result="accepted"}'] == 0
        assert s["attesto_witness_http_requests_total"]['{code="503"}'] == 1
        # The token is reopened after a short wait; the same checkpoint is
        # then witnessed (nothing was recorded by the failed attempt).
        deadline = time.monotonic() + 20
        while True:
            status, _, body = server.post(request_body("t", "s", "c1", 1, h(1)))
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 200, body
        _, _, m = server.request("GET", "/metrics")
    finally:
        server.stop()
    text = m.decode()
    promtool_check(text)
    s = samples(text)
    assert s["attesto_witness_token_failures_total"][""] == 1
    assert s["attesto_witness_token_up"][""] == 1
    assert s["attesto_witness_decisions_total"]['{result="accepted"}'] == 1


def test_textfile_is_written_during_a_token_outage(vault, receiver, tmp_path):
    n = 4
    lines = "".join(json.dumps({"stream_id": f"s{i}", "source_ref": f"o{i}",
                                "payload": {"i": i}}) + "\n" for i in range(n))
    vault.run(["enqueue", "--jsonl", "-", "--include-payload"], input=lines, check=0)
    shim = Shim(vault)
    # Every decrypt after the second fails: each reopen succeeds (it only
    # unwraps the DEK) and the next lease fails again, until the rule goes.
    shim.set_rules("C_Decrypt CKR_DEVICE_REMOVED after=2 times=0")
    path = str(tmp_path / "m.prom")
    proc = start_loop(vault, "--metrics-file", path, "--max-in-flight", "2")
    try:
        wait_for(lambda: samples(read(path)).get("attesto_relay_token_up", {}).get("") == 0, 30,
                 what="attesto_relay_token_up 0 in the metrics file")
        text = read(path)
        promtool_check(text)
        s = samples(text)
        assert s["attesto_relay_token_errors_total"][""] >= 1
        # The spool is closed during the outage: its figures are left out.
        assert "attesto_relay_items" not in s
        assert proc.poll() is None, "the service stays up while the token is gone"
        shim.clear()  # the token is back
        wait_for(lambda: samples(read(path)).get("attesto_relay_deliveries_total", {}).get("") == n
                 and samples(read(path)).get("attesto_relay_token_up", {}).get("") == 1, 90,
                 what=f"{n} deliveries and the token up again")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    text = read(path)
    promtool_check(text)
    s = samples(text)
    assert s["attesto_relay_items"]['{state="receipted"}'] == n
    assert s["attesto_relay_token_up"][""] == 1
