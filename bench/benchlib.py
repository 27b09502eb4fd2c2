# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the benchmarks: the build, a fresh token with keys, the
reference receiver behind a throwaway PKI, child CPU time and the machine's
description. The benchmarks run the project's own binaries only."""
import json
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BUILD = os.path.join(ROOT, "build", "bench")
BENCH_TARGETS = ["attesto-local-vault", "attesto-local-vault-receiver", "lv-bench-sign",
                 "https_post_ceiling", "lv-witness-bench"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(build_dir, targets=BENCH_TARGETS):
    """Configures (RelWithDebInfo, without the tests) and builds the targets
    (those the tree defines; a missing one fails the step that needs it)."""
    subprocess.run(["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                    "-DLV_TESTS=OFF"], check=True, stdout=subprocess.DEVNULL)
    known = subprocess.run(["cmake", "--build", build_dir, "--target", "help"], check=True,
                           capture_output=True, text=True).stdout
    have = [t for t in targets if f"... {t}" in known or f"{t}:" in known]
    for t in targets:
        if t not in have:
            log(f"build: no target {t} in this tree")
    subprocess.run(["cmake", "--build", build_dir, "-j2", "--target", *have], check=True,
                   stdout=subprocess.DEVNULL)


def child_cpu():
    """User+system seconds of the children waited for so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid):
    """User+system seconds a running process has used so far, all its
    threads (/proc/PID/stat utime and stime, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are 14, 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_vault(directory, installation_id="bench"):
    """A fresh SoftHSM token in directory with the keys provisioned; returns
    the environment that points the vault at it."""
    out = subprocess.run([os.path.join(ROOT, "softhsm-fixtures", "make-token"),
                          os.path.join(directory, "token"), "--label", "attesto"],
                         check=True, capture_output=True, text=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0]
    env["ATTESTO_LOCAL_VAULT_INSTALLATION_ID"] = installation_id
    env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = os.path.join(directory, "spool.sqlite3")
    env["ATTESTO_LOCAL_VAULT_WITNESS_DB"] = os.path.join(directory, "witness.sqlite3")
    return env


def relay_helpers(build_dir):
    """The system tests' PKI and Receiver (tests/relay/relaylib.py), pointed
    at build_dir's binaries."""
    os.environ["LV_BUILD_DIR"] = build_dir
    os.environ["LV_BIN"] = os.path.join(build_dir, "attesto-local-vault")
    os.environ["LV_RECEIVER"] = os.path.join(build_dir, "attesto-local-vault-receiver")
    for p in (os.path.join(ROOT, "tests", "relay"), os.path.join(ROOT, "tests", "pylib")):
        if p not in sys.path:
            sys.path.insert(0, p)
    import relaylib  # noqa: E402  (needs the paths above)
    return relaylib


class EventsLog:
    """Counts the envelopes a receiver accepted (its --events-log, one JSON
    line each), reading only what was appended since the last call."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.count = 0

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.count
        end = data.rfind(b"\n")
        if end >= 0:
            self.count += data.count(b"\n", 0, end + 1)
            self.offset += end + 1
        return self.count


def machine():
    """What the figures were measured on: numbers for the JSON, text for
    the report."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    return {"nproc": os.cpu_count() or 0, "cpu_model": model,
            "mem_gib": round(mem_kib / 1048576, 1), "kernel": os.uname().release,
            "commit": commit}


def run_json(args, env=None, timeout=None):
    """Runs a benchmark step that prints one JSON object on stdout."""
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {p.returncode}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


class Notify:
    """Our own NOTIFY_SOCKET: what the service would tell systemd."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)

    def wait_for(self, key, proc, deadline):
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                msg = self.sock.recv(4096).decode(errors="replace")
            except socket.timeout:
                continue
            if key in msg.split("\n"):
                return time.monotonic()
        raise RuntimeError(f"drain-loop did not report {key}")

    def flush(self):
        try:
            while True:
                self.sock.recv(4096)
        except socket.timeout:
            pass

    def close(self):
        self.sock.close()


def _child_of(pid, deadline):
    """The one child of pid (the program /usr/bin/time runs)."""
    path = f"/proc/{pid}/task/{pid}/children"
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError("drain-loop did not start")


def drain_loop_until(lv, env, accepted, k, notify, errpath, timeout=900, args=()):
    """Runs `drain-loop` until the receiver (accepted: its EventsLog) took k
    more envelopes; times that from READY=1. Returns (seconds, CPU seconds
    of the whole process, peak RSS in MiB, stderr, CPU seconds between
    READY=1 and the k-th acceptance: the cost of the relaying alone, start-up
    and wind-down left out).

    The peak RSS comes from /usr/bin/time (the child's ru_maxrss, the
    kernel's VmHWM over its whole life, wind-down included). Not from our
    own wait4(): a child forked by this Python process starts with Python's
    RSS as its high-water mark, which would inflate the figure."""
    env = dict(env, NOTIFY_SOCKET=notify.path)
    start = accepted.poll()
    rusage = errpath + ".time"
    with open(errpath, "wb") as errf:
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", rusage, lv,
                                 "drain-loop", "--max-in-flight", "64", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=errf)
    deadline = time.monotonic() + timeout
    child = None
    try:
        child = _child_of(proc.pid, deadline)
        ready = notify.wait_for("READY=1", proc, deadline)
        cpu_ready = proc_cpu(child)
        while accepted.poll() - start < k:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"drain-loop: {accepted.poll() - start} of {k} accepted")
            time.sleep(0.005)
        done = time.monotonic()
        window_cpu = proc_cpu(child) - cpu_ready
    finally:
        if child and proc.poll() is None:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass
        elif proc.poll() is None:
            proc.kill()
        proc.wait()
        notify.flush()
    with open(errpath, errors="replace") as f:
        err = f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"drain-loop exited {proc.returncode}: {err[-1000:]}")
    # Every attempt must have been a delivery: a refusal or a retry would
    # make the figure meaningless.
    bad = [line for line in err.splitlines() if "REASON=" in line and "REASON=delivered" not in line]
    if bad:
        raise RuntimeError(f"drain-loop: {len(bad)} failed attempt(s), first: {bad[0]}")
    with open(rusage) as f:
        kib, user, system = f.read().split()[-3:]
    return done - ready, float(user) + float(system), int(kib) / 1024.0, err, window_cpu
