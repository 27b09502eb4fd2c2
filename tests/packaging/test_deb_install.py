# SPDX-License-Identifier: Apache-2.0
"""dpkg -i installs the .deb on this machine, the binary, units and user are
there, and dpkg --purge leaves the machine exactly as it was found.
Root only; exits 77 (skipped) otherwise or when the package, its user or its
directories already exist (the machine could then not be restored as found)."""
import fcntl
import glob
import grp
import os
import pwd
import stat
import subprocess
import time

import pytest

import pkglib
from pkglib import NAME

# Every engineer's suite runs on this one machine: one install test at a time.
LOCK = "/run/lock/attesto-local-vault-packaging-test.lock"
WATCHED_FILES = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
WATCHED_GLOBS = ["/etc/attesto", "/var/lib/attesto", "/run/attesto", "/lib/systemd/system/attesto*",
                 "/usr/lib/sysusers.d/attesto*", "/usr/lib/tmpfiles.d/attesto*",
                 "/usr/bin/attesto-local-vault*", "/usr/share/doc/attesto-local-vault*",
                 "/usr/share/man/man1/attesto-local-vault*",
                 "/var/lib/systemd/deb-systemd-helper-enabled/**/attesto*",
                 "/var/lib/systemd/deb-systemd-helper-masked/attesto*",
                 "/etc/systemd/system/**/attesto*", "/var/lib/dpkg/info/attesto*"]


def snapshot():
    state = {f: open(f, "rb").read() for f in WATCHED_FILES if os.path.exists(f)}
    for g in WATCHED_GLOBS:
        for path in sorted(glob.glob(g, recursive=True)):
            st = os.lstat(path)
            state[path] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid)
    state["dpkg"] = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", NAME],
                                   capture_output=True, text=True).stdout
    return state


def account_exists(lookup, name):
    try:
        lookup(name)
        return True
    except KeyError:
        return False


def dpkg(*args):
    # dpkg does not wait for its lock; someone's apt-get may hold it briefly.
    for _ in range(60):
        p = subprocess.run(["dpkg"] + list(args), capture_output=True, text=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if "lock" not in p.stderr or p.returncode == 0:
            return p
        time.sleep(2)
    return p


@pytest.fixture(scope="module")
def machine():
    if os.geteuid() != 0:
        pytest.exit("needs root: installs the package on this machine", returncode=77)
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        if snapshot()["dpkg"] or any(os.path.exists(p) for p in ("/etc/attesto", "/var/lib/attesto")) \
                or account_exists(pwd.getpwnam, "attesto") or account_exists(grp.getgrnam, "attesto") \
                or account_exists(grp.getgrnam, "attesto-witness"):
            pytest.exit("the package, its user or its directories exist already; not touching them",
                        returncode=77)
        yield snapshot()
    finally:
        # Whatever failed above, do not leave the package behind.
        if subprocess.run(["dpkg-query", "-W", NAME], capture_output=True).returncode == 0:
            dpkg("--purge", NAME)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_install_then_purge_leaves_the_machine_as_found(machine):
    before = machine
    p = dpkg("-i", pkglib.deb())
    assert p.returncode == 0, p.stdout + p.stderr
    assert subprocess.run(["dpkg-query", "-W", "-f", "${Status}", NAME], capture_output=True,
                          text=True).stdout == "install ok installed"

    # The installed binary answers --version.
    v = subprocess.run(["/usr/bin/attesto-local-vault", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout == f"attesto-local-vault {pkglib.version()}\n", v
    # The units are in /lib/systemd/system.
    for u in ["attesto-local-vault.service", "attesto-local-vault-witness.service",
              "attesto-local-vault-witness.socket"]:
        assert os.path.isfile(f"/lib/systemd/system/{u}"), u
    # The user exists (systemd-sysusers in postinst), a system account
    # without a login shell, and owns the state directory (systemd-tmpfiles).
    user = pwd.getpwnam("attesto")
    assert user.pw_uid < 1000 and user.pw_shell.endswith("nologin")
    grp.getgrnam("attesto-witness")
    st = os.stat("/var/lib/attesto")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o750)
    # Nothing was enabled: the operator enables the services once configured.
    assert not glob.glob("/etc/systemd/system/**/attesto*", recursive=True)

    p = dpkg("--purge", NAME)
    assert p.returncode == 0, p.stdout + p.stderr
    after = snapshot()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"left behind or changed by install + purge: {changed}"


def test_purge_keeps_a_spool_and_its_owner(machine):
    # An operator's data is never deleted by a purge: with a file in
    # /var/lib/attesto, the directory and the account stay.
    p = dpkg("-i", pkglib.deb())
    assert p.returncode == 0, p.stdout + p.stderr
    user = pwd.getpwnam("attesto")
    spool = "/var/lib/attesto/local-vault.sqlite3"
    with open(spool, "wb") as f:
        f.write(b"undelivered attestations")
    os.chown(spool, user.pw_uid, user.pw_gid)
    try:
        p = dpkg("--purge", NAME)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "kept /var/lib/attesto" in p.stderr, p.stderr
        assert open(spool, "rb").read() == b"undelivered attestations"
        assert pwd.getpwnam("attesto").pw_uid == user.pw_uid
    finally:
        # Restore the machine: what the operator would do by hand.
        if os.path.exists(spool):
            os.unlink(spool)
        if os.path.isdir("/var/lib/attesto"):
            os.rmdir("/var/lib/attesto")
        subprocess.run(["userdel", "attesto"], capture_output=True)
        subprocess.run(["groupdel", "attesto"], capture_output=True)
        subprocess.run(["groupdel", "attesto-witness"], capture_output=True)
    changed = sorted(k for k in set(machine) | set(snapshot()) if machine.get(k) != snapshot().get(k))
    assert not changed, f"not restored: {changed}"
