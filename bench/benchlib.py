# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the benchmarks: the build, a fresh token with keys, the
reference receiver behind a throwaway PKI, child CPU time and the machine's
description. The benchmarks run the project's own binaries only."""
import json
import os
import resource
import shlex
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
