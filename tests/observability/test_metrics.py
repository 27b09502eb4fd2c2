# SPDX-License-Identifier: Apache-2.0
"""Metrics in the Prometheus text format: drain-loop's textfile (items per
state, deliveries, failures and dead letters by reason, the attempt latency
histogram, token errors) and witness-serve's /metrics (decisions), each
checked by Prometheus's own parser (promtool check metrics, Debian package
prometheus) and by reading the values back."""
import os
import re
import signal
import subprocess
import time

import lvtest
from relaylib import enqueue, wait_for
from witnesslib import Server, h, request_body

PROMTOOL = "/usr/bin/promtool"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def promtool_check(text):
    """promtool parses the exposition and lints it (names, units, types);
    any complaint is a failure."""
    assert os.path.exists(PROMTOOL), "promtool missing: apt-get install prometheus"
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "" and p.stderr.strip() == "", \
        f"promtool: {p.returncode}\n{p.stdout}\n{p.stderr}\n---\n{text}"


def samples(text):
    """{name: {labels-string: value}} from the exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return out


def start_loop(vault, *args):
    return subprocess.Popen([lvtest.LV_BIN, "drain-loop", "--backoff-base-ms", "5", *args],
                            env=vault.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_drain_loop_textfile(vault, receiver, tmp_path):
    # s1: two 503s then delivery; s2: a 409 (dead letter); s3: plain.
    receiver.set_faults("503:count=2:stream=s1", "409:count=1:stream=s2")
    for stream, ref in [("s1", "a"), ("s1", "b"), ("s2", "c"), ("s3", "d"), ("s3", "e")]:
        enqueue(vault, stream, ref)
    os.makedirs(tmp_path / "textfile")
    path = str(tmp_path / "textfile" / "attesto-local-vault.prom")
    proc = start_loop(vault, "--metrics-file", path)
    try:
        wait_for(lambda: samples(read(path)).get("attesto_relay_deliveries_total", {}).get("") == 4,
                 30, what="4 deliveries in the metrics file")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    text = read(path)
    promtool_check(text)
    s = samples(text)
    assert s["attesto_relay_items"] == {'{state="queued"}': 0, '{state="relaying"}': 0,
                                        '{state="receipted"}': 4, '{state="dead_letter"}': 1,
                                        '{state="quarantined"}': 0}
    assert s["attesto_relay_deliveries_total"][""] == 4
    assert s["attesto_relay_attempts_total"][""] == 7
    assert s["attesto_relay_attempt_failures_total"] == {'{reason="http_503"}': 2,
                                                         '{reason="receiver_conflict"}': 1}
    assert s["attesto_relay_dead_lettered_total"] == {'{reason="receiver_conflict"}': 1}
    assert s["attesto_relay_token_errors_total"][""] == 0
    assert s["attesto_relay_paused"][""] == 0
    hist = s["attesto_relay_attempt_duration_seconds_bucket"]
    counts = list(hist.values())
    assert counts == sorted(counts), "histogram buckets must be cumulative"
    assert hist['{le="+Inf"}'] == 7 == s["attesto_relay_attempt_duration_seconds_count"][""]
    assert 0 < s["attesto_relay_attempt_duration_seconds_sum"][""] < 7 * 30
    assert abs(s["attesto_relay_start_time_seconds"][""] - time.time()) < 120
    # Readable by node exporter, no temporary file left behind.
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path / "textfile") == ["attesto-local-vault.prom"]
    # Nothing that names an item or a payload.
    assert "local-vault:" not in text and "inst-test" not in text


def test_paused_drain_shows_in_the_textfile(vault, receiver, tmp_path):
    receiver.set_faults("401:count=inf")
    enqueue(vault, "s1", "a")
    path = str(tmp_path / "m.prom")
    proc = start_loop(vault, "--metrics-file", path)
    try:
        wait_for(lambda: samples(read(path)).get("attesto_relay_paused", {}).get("") == 1, 30,
                 what="paused=1")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    text = read(path)
    promtool_check(text)
    s = samples(text)
    assert s["attesto_relay_attempt_failures_total"]['{reason="http_401"}'] >= 1
    assert s["attesto_relay_items"]['{state="queued"}'] == 1


def test_metrics_file_in_a_missing_directory_is_refused(vault, receiver, tmp_path):
    path = str(tmp_path / "absent" / "m.prom")
    p = vault.run(["drain-loop", "--metrics-file", path], check=2)
    assert "--metrics-file" in p.stderr and "absent" in p.stderr
    env = dict(vault.env, ATTESTO_LOCAL_VAULT_METRICS_FILE=path)
    p = lvtest.run(["drain-loop"], env=env, check=2)
    assert "ATTESTO_LOCAL_VAULT_METRICS_FILE" in p.stderr


def test_metrics_file_none_writes_nothing(vault, receiver, tmp_path):
    enqueue(vault, "s1", "a")
    proc = start_loop(vault, "--metrics-file", "none")
    try:
        wait_for(lambda: receiver.events(), 30, what="a delivery")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not [f for f in os.listdir(vault.dir) if f.endswith(".prom")]


def test_witness_endpoint_metrics(vault):
    server = Server(vault)
    try:
        assert server.post(request_body("t", "s", "c1", 1, h(1)))[0] == 200
        assert server.post(request_body("t", "s", "c1", 1, h(1)))[0] == 200  # replayed
        assert server.post(request_body("t", "s", "c2", 2, h(2), h(1)))[0] == 200
        assert server.post(request_body("t", "s", "cx", 2, h("x"), h(1)))[0] == 409  # fork
        assert server.post(request_body("t", "s", "c9", 9, h(9), h(8)))[0] == 422  # gap
        status, headers, body = server.request("GET", "/metrics")
    finally:
        server.stop()
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    promtool_check(text)
    s = samples(text)
    d = s["attesto_witness_decisions_total"]
    assert d['{result="accepted"}'] == 2 and d['{result="replayed"}'] == 1
    assert d['{result="fork_evidence"}'] == 1 and d['{result="checkpoint_gap"}'] == 1
    assert s["attesto_witness_fork_evidence_total"]['{reason="conflicting_checkpoint"}'] == 1
    assert s["attesto_witness_token_failures_total"][""] == 0
