# SPDX-License-Identifier: Apache-2.0
"""Logs: under systemd (JOURNAL_STREAM naming stderr) each attempt outcome is
a journal entry with EVENT_ID, STREAM_ID, ATTEMPT and REASON; otherwise one
plain line on stderr; --log-level filters; and no PIN and no payload reach
any output of a debug-level run.

The journal is stood in for by a datagram socket at
/run/systemd/journal/socket inside a private mount namespace (unshare -m),
so the real native-protocol client code of libsystemd is what is tested."""
import json
import os
import shlex
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

import lvtest
from relaylib import enqueue, event_id, wait_for

MARKER = "PAYLOAD-MARKER-7f3c9a51e2"


def parse_native(datagram):
    """One entry of the journal's native protocol: KEY=value lines, or KEY,
    newline, a 64-bit little-endian length, the value and a newline."""
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v.decode()
            i = nl + 1
        else:
            n = struct.unpack("<Q", datagram[nl + 1:nl + 9])[0]
            fields[line.decode()] = datagram[nl + 9:nl + 9 + n].decode()
            i = nl + 9 + n + 1
    return fields


class FakeJournal:
    """/run/systemd for a child in its own mount namespace, with a socket
    that records every entry."""

    def __init__(self):
        self.run = tempfile.mkdtemp(prefix="lvj", dir="/tmp")
        os.makedirs(os.path.join(self.run, "journal"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.path.join(self.run, "journal", "socket"))
        self.sock.settimeout(0.2)
        self.raw = []
        self.running = True
        self.thread = threading.Thread(target=self._recv, daemon=True)
        self.thread.start()

    def _recv(self):
        while self.running:
            try:
                self.raw.append(self.sock.recv(1 << 20))
            except socket.timeout:
                continue
            except OSError:
                return

    def entries(self):
        return [parse_native(d) for d in list(self.raw)]

    def run_vault(self, vault, args, stderr_path, input=None):
        """Runs the vault with stderr on a file, JOURNAL_STREAM naming that
        file, as systemd sets it for a service whose stderr is the journal."""
        cmd = (f"mount --bind {shlex.quote(self.run)} /run/systemd && "
               f"exec 2>>{shlex.quote(stderr_path)} && "
               "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM && "
               f"exec {shlex.quote(lvtest.LV_BIN)} " + " ".join(shlex.quote(a) for a in args))
        return subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=vault.env, input=input,
                              capture_output=True, text=True, timeout=120)

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()
        for root, dirs, files in os.walk(self.run, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for d in dirs:
                os.rmdir(os.path.join(root, d))
        os.rmdir(self.run)


@pytest.fixture
def journal():
    j = FakeJournal()
    yield j
    j.close()


def pin_of(vault):
    with open(vault.env["ATTESTO_LOCAL_VAULT_PIN_FILE"]) as f:
        return f.read().strip()


def attempts(entries):
    return [e for e in entries if "EVENT_ID" in e]


def test_attempt_outcomes_are_journal_entries_with_fields(vault, receiver, journal, tmp_path):
    receiver.set_faults("503:count=1:stream=s1")
    enqueue(vault, "s1", "a")
    err = str(tmp_path / "stderr")
    p = journal.run_vault(vault, ["--log-level", "debug", "drain-once", "--json",
                                  "--backoff-base-ms", "5"], err)
    assert p.returncode == 7, p.stderr
    time.sleep(0.1)
    p = journal.run_vault(vault, ["--log-level", "debug", "drain-once", "--json",
                                  "--backoff-base-ms", "5"], err)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: len(attempts(journal.entries())) >= 2, 5, what="two journal entries")
    failed, done = attempts(journal.entries())[:2]
    assert failed["EVENT_ID"] == event_id("a") and failed["STREAM_ID"] == "s1"
    assert failed["ATTEMPT"] == "1" and failed["REASON"] == "http_503"
    assert failed["PRIORITY"] == "4"  # warning
    assert failed["SYSLOG_IDENTIFIER"] == "attesto-local-vault"
    assert "attempt 1 failed (http_503)" in failed["MESSAGE"]
    assert done["EVENT_ID"] == event_id("a") and done["ATTEMPT"] == "2"
    assert done["REASON"] == "delivered" and done["PRIORITY"] == "7"  # debug
    # Structured entries went to the journal, not as plain lines to stderr.
    with open(err) as f:
        assert "REASON=" not in f.read()


def test_plain_stderr_without_systemd(vault, receiver):
    receiver.set_faults("503:count=1:stream=s1")
    enqueue(vault, "s1", "a")
    p = vault.run(["--log-level", "debug", "drain-once", "--backoff-base-ms", "5"], check=7)
    lines = [l for l in p.stderr.splitlines() if "REASON=" in l]
    assert len(lines) == 1
    assert lines[0].startswith("attesto-local-vault: ")
    for field in (f"EVENT_ID={event_id('a')}", "STREAM_ID=s1", "ATTEMPT=1", "REASON=http_503"):
        assert field in lines[0]


def test_log_level_filters(vault, receiver, journal, tmp_path):
    receiver.set_faults("503:count=1:stream=s1")
    enqueue(vault, "s1", "a")
    enqueue(vault, "s2", "b")
    err = str(tmp_path / "stderr")
    # warning: the failure, not the debug-level delivery of s2
    journal.run_vault(vault, ["--log-level", "warning", "drain-once", "--backoff-base-ms", "5"],
                      err)
    time.sleep(0.3)
    got = attempts(journal.entries())
    assert [e["REASON"] for e in got] == ["http_503"]
    # error: not even the failure
    receiver.set_faults("503:count=1:stream=s3")
    enqueue(vault, "s3", "c")
    journal.raw.clear()
    journal.run_vault(vault, ["--log-level", "error", "drain-once", "--backoff-base-ms", "5"], err)
    time.sleep(0.3)
    assert attempts(journal.entries()) == []
    p = vault.run(["--log-level", "loud", "status"], check=2)
    assert "--log-level: loud: must be one of error|warning|notice|info|debug" in p.stderr
    # the environment variable works like the flag
    env = dict(vault.env, ATTESTO_LOCAL_VAULT_LOG_LEVEL="chatty")
    lvtest.run(["status"], env=env, check=2)


def test_no_pin_and_no_payload_in_any_output_at_debug(vault, receiver, journal, tmp_path):
    pin = pin_of(vault)
    secret_payload = {"note": MARKER, "nested": {"k": MARKER}}
    enqueue(vault, "s1", "a", payload=secret_payload)
    vault.run(["enqueue", "--jsonl", "-"], check=0,
              input=json.dumps({"stream_id": "s2", "source_ref": "b",
                                "payload": {"x": MARKER}}) + "\n")
    receiver.set_faults("503:count=1:stream=s1", "html:count=1:stream=s2")
    err = str(tmp_path / "stderr")
    outputs = []
    for args in (["drain-once", "--backoff-base-ms", "5"],
                 ["drain-once", "--backoff-base-ms", "5"],
                 ["status"], ["list"], ["show", event_id("a")], ["doctor"], ["public-key"]):
        time.sleep(0.05)
        p = journal.run_vault(vault, ["--log-level", "debug", *args], err)
        outputs += [p.stdout, p.stderr]
        # and the same without the journal: plain stderr
        p = vault.run(["--log-level", "debug", *args])
        outputs += [p.stdout, p.stderr]
    # a drain-loop run under the journal, stopped by SIGTERM
    enqueue(vault, "s3", "c", payload={"m": MARKER})
    with open(err, "a") as ef:
        loop = subprocess.Popen(
            ["unshare", "-m", "sh", "-c",
             f"mount --bind {shlex.quote(journal.run)} /run/systemd && "
             f"JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM && "
             f"exec {shlex.quote(lvtest.LV_BIN)} --log-level debug drain-loop --metrics-file none"],
            env=vault.env, stdout=subprocess.PIPE, stderr=ef, text=True)
        try:
            wait_for(lambda: any(e.get("REASON") == "delivered" and e["EVENT_ID"] == event_id("c")
                                 for e in attempts(journal.entries())), 30, what="delivery of c")
        finally:
            loop.terminate()
            outputs.append(loop.communicate(timeout=30)[0])
    # a rejected PIN is not echoed either
    bad = tmp_path / "bad-pin"
    bad.write_text("PIN-MARKER-0451\n")
    env = dict(vault.env, ATTESTO_LOCAL_VAULT_PIN_FILE=str(bad))
    p = lvtest.run(["--log-level", "debug", "drain-once"], env=env, check=5)
    outputs += [p.stdout, p.stderr]
    with open(err) as f:
        outputs.append(f.read())
    journal_text = "\n".join(d.decode(errors="replace") for d in journal.raw)
    everything = "\n".join(outputs) + journal_text
    # The runs did log: the checks below are not vacuous.
    assert "REASON=http_503" in journal_text and "REASON=ack_" in journal_text
    assert len(attempts(journal.entries())) >= 3
    assert MARKER not in everything
    assert pin not in everything
    assert "PIN-MARKER-0451" not in everything
    # show --payload is the one place that prints a payload, on request.
    assert MARKER in vault.run(["show", event_id("a"), "--payload", "--json"], check=0).stdout
