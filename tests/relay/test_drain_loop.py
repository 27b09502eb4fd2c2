# SPDX-License-Identifier: Apache-2.0
"""drain-loop: the systemd notify protocol (READY=1 after the token and the
spool are open, STATUS=, WATCHDOG=1 at the configured rate, STOPPING=1),
prompt wake-up on enqueue, a clean SIGTERM with requests in flight, and
per-stream order under random transient faults."""
import collections
import os
import signal
import socket
import subprocess
import threading
import time

import lvtest
from relaylib import assert_log_agrees, enqueue, enqueue_batch, event_id, items, show, status, counts, wait_for


class NotifyListener:
    """A NOTIFY_SOCKET: an AF_UNIX datagram socket recording what arrives."""

    def __init__(self, directory):
        self.path = os.path.join(str(directory), "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []  # (monotonic time, {key: value})
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(l.split("=", 1) for l in data.decode().splitlines() if "=" in l)
            with self.lock:
                self.messages.append((time.monotonic(), fields))

    def with_key(self, key):
        with self.lock:
            return [(t, m) for t, m in self.messages if key in m]

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def start_loop(vault, listener, *args, watchdog_usec=None):
    env = dict(vault.env)
    env["NOTIFY_SOCKET"] = listener.path
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    # WATCHDOG_PID must name the service's own pid, as systemd sets it: the
    # shell exports its $$ and execs the vault in the same process.
    cmd = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh",
           lvtest.LV_BIN, "drain-loop", "--backoff-base-ms", "5", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop_loop(proc, timeout=15):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_systemd_notify_protocol_and_prompt_wakeup(vault, start_receiver, tmp_path):
    receiver = start_receiver(vault)
    enqueue(vault, "s1", "before-1")
    enqueue(vault, "s2", "before-2")
    listener = NotifyListener(tmp_path)
    proc = start_loop(vault, listener, watchdog_usec=2000000)
    try:
        ready = wait_for(lambda: listener.with_key("READY"), 60, what="READY=1")
        t_ready, m_ready = ready[0]
        assert m_ready["READY"] == "1"
        # READY=1 comes after the token login and the spool open (with its
        # DEK unwrap): the spool exists and nothing was sent before it.
        assert os.path.exists(vault.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"])
        assert "queued" in m_ready.get("STATUS", "")
        wait_for(lambda: counts(vault)["receipted"] == 2, 60, what="first two delivered")

        # Another process enqueues; the loop wakes without waiting for its
        # 30 s safety timer.
        enqueue(vault, "s3", "later")
        t0 = time.monotonic()
        wait_for(lambda: show(vault, event_id("later"))["state"] == "receipted", 25,
                 interval=0.05, what="prompt delivery of a new item")
        # well before the loop's 30 s safety timer: inotify woke it
        assert time.monotonic() - t0 < 10.0

        # WATCHDOG=1 every WATCHDOG_USEC/2 (1 s): paced by the setting, not
        # by loop iterations (no two much closer than 1 s), and never a gap
        # that would make systemd kill the service (2 s).
        wait_for(lambda: len([t for t, _ in listener.with_key("WATCHDOG") if t >= t_ready]) >= 5,
                 30, what="five WATCHDOG=1")
        wd = [t for t, _ in listener.with_key("WATCHDOG") if t >= t_ready]
        gaps = [b - a for a, b in zip(wd, wd[1:])]
        assert min(gaps) > 0.7, f"watchdog gap {min(gaps):.3f}s: not paced by WATCHDOG_USEC/2"
        assert max(gaps) < 2.0, f"watchdog gap {max(gaps):.3f}s exceeds WATCHDOG_USEC"
        assert any("receipted 3" in m.get("STATUS", "") for _, m in listener.with_key("STATUS")) \
            or wait_for(lambda: any("receipted 3" in m.get("STATUS", "")
                                    for _, m in listener.with_key("STATUS")), 5, what="STATUS")

        code, out, err = stop_loop(proc)
        assert code == 0, err
        assert listener.with_key("STOPPING"), "no STOPPING=1"
        st = counts(vault)
        assert st["relaying"] == 0 and st["receipted"] == 3
        assert_log_agrees(vault, receiver, vault.pk)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()


def test_no_watchdog_for_another_pid(vault, start_receiver, tmp_path):
    """sd_watchdog_enabled honours WATCHDOG_PID: a watchdog meant for
    another process is not ours to feed."""
    start_receiver(vault)
    listener = NotifyListener(tmp_path)
    env = dict(vault.env, NOTIFY_SOCKET=listener.path, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    proc = subprocess.Popen([lvtest.LV_BIN, "drain-loop"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: listener.with_key("READY"), 60, what="READY=1")
        time.sleep(0.6)
        assert listener.with_key("WATCHDOG") == []
        code, _, err = stop_loop(proc)
        assert code == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


def test_no_ready_when_the_token_login_fails(vault, start_receiver, tmp_path):
    start_receiver(vault)
    bad_pin = tmp_path / "bad-pin"
    bad_pin.write_text("00000000\n")
    vault.env["ATTESTO_LOCAL_VAULT_PIN_FILE"] = str(bad_pin)
    listener = NotifyListener(tmp_path)
    proc = start_loop(vault, listener)
    try:
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 5, err
        time.sleep(0.3)
        assert listener.with_key("READY") == []
    finally:
        listener.close()


def test_sigterm_with_a_request_in_flight_releases_its_lease(vault, start_receiver, tmp_path):
    receiver = start_receiver(vault, faults=["slow:delay=8000"])
    enqueue(vault, "s", "inflight")
    listener = NotifyListener(tmp_path)
    proc = start_loop(vault, listener, "--stop-grace-ms", "300", "--timeout-ms", "20000")
    try:
        wait_for(lambda: "fault slow" in receiver.stderr(), 60, what="request in flight")
        assert show(vault, event_id("inflight"))["state"] == "relaying"
        t0 = time.monotonic()
        code, out, err = stop_loop(proc)
        assert code == 0, err
        assert time.monotonic() - t0 < 6.0  # bounded by the grace, not the 8 s request
        assert listener.with_key("STOPPING")
        item = show(vault, event_id("inflight"))
        assert item["state"] == "queued" and item["attempts"] == 0
        assert counts(vault)["relaying"] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


def test_sigterm_lets_a_request_in_flight_finish_within_the_grace(vault, start_receiver,
                                                                   tmp_path):
    receiver = start_receiver(vault, faults=["slow:delay=800"])
    enqueue(vault, "s", "finishes")
    listener = NotifyListener(tmp_path)
    proc = start_loop(vault, listener, "--stop-grace-ms", "5000")
    try:
        wait_for(lambda: "fault slow" in receiver.stderr(), 60, what="request in flight")
        code, out, err = stop_loop(proc)
        assert code == 0, err
        assert show(vault, event_id("finishes"))["state"] == "receipted"
        assert counts(vault)["relaying"] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


def test_per_stream_order_under_random_transient_faults(vault, start_receiver, tmp_path):
    streams, per_stream = 5, 200
    receiver = start_receiver(vault, faults=["random:prob=0.15"], seed=4242)
    # interleaved across streams, in enqueue order within each
    batch = [(f"ord{s}", f"ord{s}-{i:03d}", {"i": i, "s": s})
             for i in range(per_stream) for s in range(streams)]
    enqueue_batch(vault, batch)
    listener = NotifyListener(tmp_path)
    proc = start_loop(vault, listener, "--timeout-ms", "3000")
    try:
        # Progress is read from the receiver's log (a file) rather than by
        # running `status` over and over, which would compete for the CPU.
        wait_for(lambda: receiver.event_count() == streams * per_stream, 400, interval=0.5,
                 what="all items accepted by the receiver")
        wait_for(lambda: counts(vault)["receipted"] == streams * per_stream, 60, interval=0.5,
                 what="all items receipted")
        code, out, err = stop_loop(proc)
        assert code == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    log = receiver.events()
    per = collections.defaultdict(list)
    for e in log:
        per[e["stream_id"]].append(e)
    for s in range(streams):
        refs = [e["event_id"].rsplit(":", 1)[1] for e in per[f"ord{s}"]]
        assert refs == [f"ord{s}-{i:03d}" for i in range(per_stream)]
        assert [e["seq_no"] for e in per[f"ord{s}"]] == list(range(1, per_stream + 1))
    assert_log_agrees(vault, receiver, vault.pk)
    all_items = items(vault)
    retried = [i for i in all_items if i["attempts"] > 1]
    # The faults really happened, and each was survived by a retry.
    assert len(retried) >= 50, f"only {len(retried)} items needed a retry"
    assert all(i["state"] == "receipted" for i in all_items)
