# SPDX-License-Identifier: Apache-2.0
"""Every system call the two services make while doing their jobs is allowed
by their units' SystemCallFilter=. systemd is not PID 1 on the test
machines, so the units cannot be started here; instead the real work runs
under strace (the relay delivering an item to the reference receiver over
TLS under drain-loop with sd_notify and the watchdog; the witness signing a
checkpoint under socket activation), and what it called is compared with the
filter systemd would install, expanded by systemd-analyze itself. With
SystemCallErrorNumber=EPERM a missing call would not kill the service but
make it fail in odd ways, which is why this is checked."""
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import lvtest

sys.path.insert(0, os.path.join(lvtest.SOURCE_DIR, "tests", "relay"))
import relaylib  # noqa: E402  (the relay's PKI and reference receiver helpers)

UNIT_DIR = os.path.join(lvtest.SOURCE_DIR, "systemd")


def unit_settings(name):
    out = {}
    for line in open(os.path.join(UNIT_DIR, name)):
        line = line.strip()
        if line and line[0] not in "#;[":
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def syscall_groups():
    """{"@group": [entries]} from systemd-analyze syscall-filter."""
    groups, current = {}, None
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(names, groups):
    out = set()
    for n in names:
        if n.startswith("@"):
            out |= expand(groups[n], groups)
        else:
            out.add(n)
    return out


def allowed_syscalls(unit):
    """The set the unit's SystemCallFilter= lines allow: the first line an
    allow list, each "~" line taking its sets away (systemd's semantics)."""
    groups = syscall_groups()
    lines = unit_settings(unit)["SystemCallFilter"]
    assert not lines[0].startswith("~"), "an allow list comes first"
    allowed = set()
    for line in lines:
        if line.startswith("~"):
            allowed -= expand(line[1:].split(), groups)
        else:
            allowed |= expand(line.split(), groups)
    return allowed


def traced_syscalls(trace, exe):
    """Names of the system calls in an strace -f log, counting the first
    process only from its execve of exe on (before that it is the launcher)."""
    names, first, started = set(), None, False
    for line in open(trace):
        m = re.match(r"^(\d+)\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)", line)
        if not m:
            continue
        pid, name = m.group(1), m.group(2)
        if first is None:
            first = pid
        if pid == first and not started:
            if name == "execve" and f'"{exe}"' in line and line.rstrip().endswith("= 0"):
                started = True
            continue
        names.add(name)
    assert started, f"{exe} was never executed"
    return names


def traced_child(pid, *exes):
    """The pid of strace's child once it runs one of exes."""
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
        except OSError:
            kids = []
        for kid in kids:
            try:
                if open(f"/proc/{kid}/cmdline", "rb").read().split(b"\0")[0].decode() in exes:
                    return int(kid)
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError(f"strace did not start {exes}")


def as_service_user(tree):
    """strace options that run the traced program as an unprivileged user, as
    the units do (User=attesto). Some libraries act differently as root:
    SQLite, for one, fchown()s its journal files only when euid is 0. When
    the tests run as root, the tree the program uses is handed to nobody."""
    if os.geteuid() != 0:
        return []
    subprocess.run(["chown", "-R", "nobody:nogroup", str(tree)], check=True)
    return ["-u", "nobody"]


def stderr_of(f):
    f.seek(0)
    return f.read()


class NotifySocket:
    """The NOTIFY_SOCKET, read for the whole life of the service, as systemd
    reads it: a datagram socket nobody reads fills up, and sd_notify() (the
    watchdog pings, STATUS=) then blocks the service itself."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o777)
        self.sock.settimeout(0.2)
        self.messages = []
        self.cond = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stopped:
            try:
                m = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                self.messages.append(m)
                self.cond.notify_all()

    def wait_for(self, needle, timeout):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(needle in m for m in self.messages), timeout)
        assert ok, f"no {needle!r} on the notify socket within {timeout} s: {self.messages}"

    def close(self):
        self.stopped = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def work():
    """A directory the unprivileged user can reach (pytest's own temp
    directories are private to the user running the tests)."""
    d = tempfile.mkdtemp(prefix="lv-syscalls-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def check(unit, used):
    allowed = allowed_syscalls(unit)
    assert len(used) > 30, used  # a real run, not an empty trace
    denied = sorted(used - allowed)
    assert not denied, f"{unit}: the service calls {denied}, which its SystemCallFilter= denies"


def test_relay_service_calls_only_what_its_filter_allows(work):
    tmp_path = work
    vault = lvtest.Vault(tmp_path / "vault")
    (tmp_path / "pki").mkdir()
    pki = relaylib.PKI(tmp_path / "pki")
    receiver = relaylib.Receiver(tmp_path / "receiver", pki,
                                 register=[("inst-test", relaylib.public_key_hex(vault))])
    try:
        relaylib.relay_env(vault, receiver, pki)
        relaylib.enqueue(vault, "str_1", "ref-1")
        runas = as_service_user(tmp_path / "vault")
        notify = NotifySocket(str(tmp_path / "notify.sock"))
        env = dict(vault.env, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="2000000")
        trace = str(tmp_path / "trace")
        argv = shlex.split(unit_settings("attesto-local-vault.service")["ExecStart"][0])
        # Its stderr goes to a file, not a pipe that nobody reads while it
        # runs (a full pipe would block the service as a full socket would).
        errf = open(tmp_path / "stderr", "w+")
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", trace] + runas
                                  + [lvtest.LV_BIN] + argv[1:],
                                  env=env, stdout=subprocess.DEVNULL, stderr=errf)
        vault_pid = traced_child(tracer.pid, lvtest.LV_BIN)
        notify.wait_for(b"READY=1", 60)
        # Delivered: seen on the receiver's side, so that nothing but the
        # service itself touches the spool while it runs.
        deadline = time.time() + 60
        while not receiver.events():
            assert time.time() < deadline and tracer.poll() is None, stderr_of(errf)
            time.sleep(0.1)
        # Its acknowledgement recorded, the service goes idle and is stopped as
        # systemd stops it; it finishes and exits 0.
        time.sleep(1)
        os.kill(vault_pid, signal.SIGTERM)
        assert tracer.wait(timeout=60) == 0, stderr_of(errf)
        notify.wait_for(b"STOPPING=1", 5)
        notify.close()
    finally:
        receiver.stop()
    assert [i["state"] for i in relaylib.items(vault)] == ["receipted"]
    check("attesto-local-vault.service", traced_syscalls(trace, lvtest.LV_BIN))


def test_witness_service_calls_only_what_its_filter_allows(work):
    tmp_path = work
    vault = lvtest.Vault(tmp_path)
    sock = unit_settings("attesto-local-vault-witness.socket")
    argv = shlex.split(unit_settings("attesto-local-vault-witness.service")["ExecStart"][0])
    path = str(tmp_path / "witness.sock")
    env = [f"--setenv={k}={v}" for k, v in vault.env.items()
           if k.startswith("ATTESTO_LOCAL_VAULT_") or k == "SOFTHSM2_CONF"]
    trace = str(tmp_path / "trace")
    runas = as_service_user(tmp_path)
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", trace] + runas + ["systemd-socket-activate", "-l",
                             path, f"--fdname={sock['FileDescriptorName'][0]}"] + env
                            + [lvtest.LV_BIN] + argv[1:],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    service_pid = traced_child(proc.pid, "systemd-socket-activate", lvtest.LV_BIN)
    deadline = time.time() + 30
    while True:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            c.connect(path)
            break
        except OSError:
            c.close()
            assert time.time() < deadline
            time.sleep(0.05)
    body = json.dumps({"tenant_id": "ten_1", "stream_id": "str_1", "checkpoint_id": "chk_1",
                       "checkpoint_seq_no": 1, "checkpoint_hash": "ab" * 32}).encode()
    c.sendall(b"POST /v1/witness/checkpoints HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    answer = b""
    while chunk := c.recv(65536):
        answer += chunk
    c.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    os.kill(service_pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    check("attesto-local-vault-witness.service", traced_syscalls(trace, lvtest.LV_BIN))
