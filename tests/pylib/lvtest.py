# SPDX-License-Identifier: Apache-2.0
"""Helpers for the system tests: fresh SoftHSM tokens, running the binary."""
import os
import shlex
import subprocess
import tempfile

SOURCE_DIR = os.environ.get("LV_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("LV_BUILD_DIR", os.path.join(SOURCE_DIR, "build", "ci"))
LV_BIN = os.environ.get("LV_BIN", os.path.join(BUILD_DIR, "attesto-local-vault"))
MAKE_TOKEN = os.environ.get("LV_MAKE_TOKEN", os.path.join(SOURCE_DIR, "softhsm-fixtures", "make-token"))
VECTORS = os.environ.get("LV_VECTORS", os.path.join(SOURCE_DIR, "tests", "vectors"))


def make_token(directory, label="attesto"):
    """Creates a fresh SoftHSM token under directory; returns its environment
    (a dict of the variables make-token exports) merged over os.environ."""
    out = subprocess.run([MAKE_TOKEN, os.path.join(directory, "token"), "--label", label],
                         check=True, capture_output=True, text=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        if not line.startswith("export "):
            continue
        name, _, value = line[len("export "):].partition("=")
        env[name] = shlex.split(value)[0]
    env["LV_TOKEN_DIR"] = os.path.join(directory, "token")
    return env


def run(args, env=None, input=None, check=None, timeout=120):
    """Runs the vault binary; returns CompletedProcess with text output.
    check=N asserts the exit code equals N."""
    p = subprocess.run([LV_BIN] + list(args), env=env, input=input, capture_output=True,
                       text=isinstance(input, str) or input is None, timeout=timeout)
    if check is not None:
        assert p.returncode == check, (
            f"{args}: exit {p.returncode}, expected {check}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


class Vault:
    """A fresh token (keys provisioned unless keys=False) and paths in a temp dir."""

    def __init__(self, tmp, keys=True, label="attesto"):
        self.dir = str(tmp)
        self.env = make_token(self.dir, label)
        self.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = os.path.join(self.dir, "spool.sqlite3")
        self.env["ATTESTO_LOCAL_VAULT_WITNESS_DB"] = os.path.join(self.dir, "witness.sqlite3")
        self.env["ATTESTO_LOCAL_VAULT_INSTALLATION_ID"] = "inst-test"
        if keys:
            run(["keys", "init"], env=self.env, check=0)

    def run(self, args, **kw):
        kw.setdefault("env", self.env)
        return run(args, **kw)


# ---- valgrind: LV_VALGRIND=1 runs every vault process under memcheck ---------
# LV_BIN becomes a wrapper that execs valgrind (logs in LV_VALGRIND_LOGS, one
# file per process); a memory error or a definite leak makes the process
# exit 99, which fails the test that ran it. scripts/valgrind runs the system
# tests this way and summarizes the logs (docs/reliability.md).
if os.environ.get("LV_VALGRIND") == "1":
    _vg_logs = os.environ.get("LV_VALGRIND_LOGS") or tempfile.mkdtemp(prefix="lv-valgrind.")
    _vg_bin = os.path.join(_vg_logs, "bin")
    os.makedirs(_vg_bin, exist_ok=True)
    _real = os.environ.get("LV_VALGRIND_REAL_BIN", LV_BIN)
    _wrapper = os.path.join(_vg_bin, "attesto-local-vault")
    _script = ("#!/bin/sh\n"
               "exec valgrind --quiet --error-exitcode=99 --leak-check=full"
               " --errors-for-leak-kinds=definite --show-leak-kinds=definite"
               # p11-kit dlcloses a registered module before the leak check:
               # keep its symbols, or valgrind.supp cannot name SoftHSM.
               " --keep-debuginfo=yes"
               f" --suppressions={shlex.quote(os.path.join(SOURCE_DIR, 'tests/sanitizers/valgrind.supp'))}"
               f" --log-file={shlex.quote(_vg_logs)}/vg.%p.log {shlex.quote(_real)} \"$@\"\n")
    _tmp = f"{_wrapper}.{os.getpid()}"
    with open(_tmp, "w") as _f:
        _f.write(_script)
    os.chmod(_tmp, 0o755)
    os.rename(_tmp, _wrapper)
    os.environ["LV_VALGRIND_REAL_BIN"] = _real
    os.environ["LV_VALGRIND_LOGS"] = _vg_logs
    LV_BIN = os.environ["LV_BIN"] = _wrapper
