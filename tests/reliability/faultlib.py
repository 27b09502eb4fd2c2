# SPDX-License-Identifier: Apache-2.0
"""Helpers for the reliability tests: small tmpfs file systems (full and
read-only disks), the fault-injecting PKCS#11 shim, a NOTIFY_SOCKET listener
that records what the vault tells systemd, and an independent look at the
spool file through Python's sqlite3."""
import contextlib
import shutil
import os
import socket
import sqlite3
import subprocess
import threading
import time

import lvtest

SHIM = os.environ.get("LV_SHIM", os.path.join(lvtest.BUILD_DIR, "tests", "libp11shim.so"))


# ---- small file systems --------------------------------------------------

def _mount(args):
    subprocess.run(["mount"] + args, check=True, capture_output=True)


@contextlib.contextmanager
def tmpfs(path, size):
    """A tmpfs of `size` (mount syntax, e.g. "512k") mounted on path for the
    block. Needs root (scripts/test runs as root); a test that cannot mount
    fails rather than skips, so a missing guarantee is never silent."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        raise AssertionError("disk-fault tests need root to mount a tmpfs (run scripts/test as root)")
    _mount(["-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path])
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False, capture_output=True)


def remount(path, *opts):
    """remount(path, "ro") / ("rw") / ("size=8m")."""
    _mount(["-o", ",".join(("remount",) + opts), path])


def fill(path, leave=0):
    """Fills the file system holding path with a filler file until at most
    `leave` bytes are free; returns the filler's path (delete it to free)."""
    filler = os.path.join(path, "filler")
    chunk = b"\0" * 4096
    with open(filler, "ab") as f:
        while True:
            st = os.statvfs(path)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk if free - leave >= 4096 else chunk[: max(1, free - leave)])
                f.flush()
            except OSError:
                break
    return filler


# ---- the spool, read independently -----------------------------------------

def spool_rows(db_path):
    """(event_id, state, envelope_hash, payload_hash, length(envelope),
    length(payload)) of every item, read with Python's sqlite3 on a
    read-only connection, after an integrity check of the whole file."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        assert ok == "ok", f"spool integrity_check: {ok}"
        return con.execute(
            "SELECT event_id, state, envelope_hash, payload_hash, length(envelope),"
            " length(payload) FROM items ORDER BY id").fetchall()
    finally:
        con.close()


# ---- the PKCS#11 shim ------------------------------------------------------

class Shim:
    """Points a vault's environment at the fault-injecting shim wrapping its
    SoftHSM token; set_rules() changes the faults while processes run."""

    def __init__(self, vault):
        self.dir = vault.dir
        self.rules = os.path.join(self.dir, "shim.rules")
        self.log = os.path.join(self.dir, "shim.log")
        env = vault.env
        env["LV_SHIM_MODULE"] = env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"]
        env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"] = SHIM
        env["LV_SHIM_RULES"] = self.rules
        env["LV_SHIM_LOG"] = self.log

    def set_rules(self, *rules):
        tmp = self.rules + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(r + "\n" for r in rules))
        os.rename(tmp, self.rules)

    def clear(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.rules)

    def injected(self, needle=""):
        """Lines of the injection log containing needle."""
        try:
            with open(self.log) as f:
                return [l for l in f if needle in l and "BADRULE" not in l]
        except FileNotFoundError:
            return []

    def bad_rules(self):
        try:
            with open(self.log) as f:
                return [l for l in f if "BADRULE" in l]
        except FileNotFoundError:
            return []


# ---- sd_notify -----------------------------------------------------------------

class NotifyListener:
    """A NOTIFY_SOCKET (unix datagram) that records every message a process
    sends with sd_notify, as systemd would receive them."""

    def __init__(self, directory):
        self.path = os.path.join(str(directory), "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode(errors="replace"))

    def env(self, env):
        env["NOTIFY_SOCKET"] = self.path
        return env

    def fields(self, name):
        """Every value of NAME= sent so far, in order."""
        with self._lock:
            msgs = list(self.messages)
        out = []
        for m in msgs:
            for line in m.split("\n"):
                if line.startswith(name + "="):
                    out.append(line[len(name) + 1:])
        return out

    def wait_for(self, name, pred, timeout, what=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for v in self.fields(name):
                if pred(v):
                    return v
            time.sleep(0.05)
        raise AssertionError(f"no {name}= matching {what or pred} within {timeout}s; got "
                             f"{self.fields(name)[-5:]}")

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# ---- provisioned tokens, copied ----------------------------------------------

class ClonedVault(lvtest.Vault):
    """A vault whose SoftHSM token is a copy of template's (same keys), made
    without running keys init again: SoftHSM keeps a token in one directory,
    so a copy is an independent token. Tests that each need a fresh token
    but not fresh keys save a keys init (seconds under ASan) this way."""

    def __init__(self, template, tmp):  # pylint: disable=super-init-not-called
        self.dir = str(tmp)
        os.makedirs(self.dir, exist_ok=True)
        src, dst = os.path.join(template.dir, "token"), os.path.join(self.dir, "token")
        shutil.copytree(src, dst)
        conf = os.path.join(dst, "softhsm2.conf")
        with open(conf) as f:
            text = f.read().replace(src, dst)
        with open(conf, "w") as f:
            f.write(text)
        self.env = {k: (v.replace(template.dir, self.dir) if isinstance(v, str) else v)
                    for k, v in template.env.items()}
