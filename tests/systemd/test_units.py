# SPDX-License-Identifier: Apache-2.0
"""The unit files in systemd/ pass systemd-analyze verify and security, and
the sysusers.d and tmpfiles.d files make what the units expect."""
import os
import re
import shutil
import subprocess

import pytest

import lvtest

UNIT_DIR = os.path.join(lvtest.SOURCE_DIR, "systemd")
UNITS = ["attesto-local-vault.service", "attesto-local-vault-witness.service",
         "attesto-local-vault-witness.socket"]
SERVICES = [u for u in UNITS if u.endswith(".service")]
INSTALLED_BIN = "/usr/bin/attesto-local-vault"


def staged_units(tmp_path):
    """Copies the real unit files into tmp_path with only the binary's path
    changed to the built binary (systemd-analyze verify checks that the
    ExecStart= binary exists), and a MANPATH holding the man page that the
    units' Documentation= names. Returns (unit dir, environment)."""
    units = tmp_path / "units"
    units.mkdir()
    for u in UNITS:
        text = open(os.path.join(UNIT_DIR, u)).read()
        if u.endswith(".service"):
            assert f"ExecStart={INSTALLED_BIN} " in text, f"{u}: ExecStart= does not run {INSTALLED_BIN}"
        staged = text.replace(INSTALLED_BIN, lvtest.LV_BIN)
        # Nothing but the ExecStart= path may differ from the real file.
        changed = [(a, b) for a, b in zip(text.splitlines(), staged.splitlines()) if a != b]
        assert all(a.startswith("ExecStart=") for a, _ in changed), changed
        (units / u).write_text(staged)
    man1 = tmp_path / "man" / "man1"
    man1.mkdir(parents=True)
    shutil.copy(os.path.join(lvtest.SOURCE_DIR, "docs", "attesto-local-vault.1"), man1)
    env = dict(os.environ, MANPATH=str(tmp_path / "man"), SYSTEMD_LOG_LEVEL="notice")
    return units, env


def test_every_unit_passes_systemd_analyze_verify(tmp_path):
    units, env = staged_units(tmp_path)
    p = subprocess.run(["systemd-analyze", "verify"] + [str(units / u) for u in UNITS],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    # verify reports unknown keys, bad values and missing binaries or man
    # pages as messages; a clean unit produces none.
    assert p.stderr.strip() == "", p.stderr


def test_verify_fails_when_the_binary_is_missing(tmp_path):
    # The check above is only worth something if verify really looks at the
    # ExecStart= binary: the same unit naming a binary that does not exist fails.
    units, env = staged_units(tmp_path)
    missing = str(tmp_path / "nowhere" / "attesto-local-vault")
    text = open(os.path.join(UNIT_DIR, SERVICES[0])).read().replace(INSTALLED_BIN, missing)
    (units / SERVICES[0]).write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(units / SERVICES[0])],
                       env=env, capture_output=True, text=True)
    assert p.returncode != 0 and missing in p.stderr, p.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_security_exposure_at_most_2(tmp_path, service):
    units, env = staged_units(tmp_path)
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                        str(units / service)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    assert m, p.stdout
    assert float(m.group(1)) <= 2.0, p.stdout


def test_security_threshold_rejects_an_unhardened_service(tmp_path):
    # The same command fails a service without the hardening, so the pass
    # above means something.
    units, env = staged_units(tmp_path)
    text = (units / SERVICES[0]).read_text()
    bare = text.split("# Hardening.")[0]
    assert "ProtectSystem" not in bare
    (units / "bare.service").write_text(bare)
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                        str(units / "bare.service")], env=env, capture_output=True, text=True)
    assert p.returncode != 0, p.stdout


def unit_settings(name):
    """{key: [values]} of a unit file, comments and sections ignored."""
    out = {}
    for line in open(os.path.join(UNIT_DIR, name)):
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, _, v = line.partition("=")
        out.setdefault(k, []).append(v)
    return out


def test_relay_service_contract():
    s = unit_settings("attesto-local-vault.service")
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == [f"{INSTALLED_BIN} drain-loop"]
    assert s["Restart"] == ["on-failure"]
    assert "WatchdogSec" in s
    assert s["StateDirectory"] == ["attesto"]
    assert s["LoadCredential"] == ["pkcs11-pin:/etc/attesto/pkcs11-pin"]
    assert s["EnvironmentFile"] == ["-/etc/attesto/local-vault.env"]
    # A token or PIN failure (exit 5) must not be retried by systemd.
    assert "5" in s["RestartPreventExitStatus"][0].split()
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_witness_units_contract():
    sock = unit_settings("attesto-local-vault-witness.socket")
    svc = unit_settings("attesto-local-vault-witness.service")
    assert sock["Accept"] == ["no"]
    assert len(sock["ListenStream"]) == 1 and sock["ListenStream"][0].startswith("/run/attesto/")
    assert sock["FileDescriptorName"] and sock["SocketMode"] == ["0660"]
    assert svc["ExecStart"][0].startswith(f"{INSTALLED_BIN} witness-serve")
    # witness-serve sends READY=1; only the main process may.
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert svc["LoadCredential"] == ["pkcs11-pin:/etc/attesto/pkcs11-pin"]


def test_sysusers_creates_the_accounts_the_units_name(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    p = subprocess.run(["systemd-sysusers", f"--root={root}",
                        os.path.join(UNIT_DIR, "attesto-local-vault.sysusers")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    passwd = {l.split(":")[0]: l.split(":") for l in (root / "etc/passwd").read_text().splitlines()}
    groups = {l.split(":")[0]: l.split(":") for l in (root / "etc/group").read_text().splitlines()}
    user = unit_settings("attesto-local-vault.service")["User"][0]
    assert user in passwd
    entry = passwd[user]
    assert int(entry[2]) < 1000, "a system account"
    assert entry[5] == "/var/lib/attesto" and entry[6].endswith("nologin")
    assert groups[unit_settings("attesto-local-vault.service")["Group"][0]][2] == entry[3]
    assert unit_settings("attesto-local-vault-witness.socket")["SocketGroup"][0] in groups
    # The postrm purge script removes only the account with this exact entry.
    postrm = open(os.path.join(lvtest.SOURCE_DIR, "packaging/debian/attesto-local-vault.postrm")).read()
    assert f":{entry[4]}:{entry[5]}:" in postrm


def test_tmpfiles_makes_the_state_directory(tmp_path):
    line = [l for l in open(os.path.join(UNIT_DIR, "attesto-local-vault.tmpfiles"))
            if l.strip() and not l.startswith("#")]
    assert len(line) == 1
    kind, path, mode, user, group, _ = line[0].split()
    svc = unit_settings("attesto-local-vault.service")
    # The same directory, mode and owner as StateDirectory= gives it.
    assert (kind, path) == ("d", "/var/lib/" + svc["StateDirectory"][0])
    assert mode == svc["StateDirectoryMode"][0] and (user, group) == (svc["User"][0], svc["Group"][0])
    # A root of its own with no accounts but what sysusers.d makes: nothing
    # read from this machine's /etc/passwd and /etc/group, which another
    # suite's package install (packaging_deb_install, in any worktree) may be
    # rewriting at that moment.
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    p = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                        os.path.join(UNIT_DIR, "attesto-local-vault.tmpfiles")],
                       capture_output=True, text=True)
    # No account yet: tmpfiles says so rather than make the directory with a
    # wrong owner.
    assert p.returncode != 0 and "attesto" in p.stderr, p.stderr
    subprocess.run(["systemd-sysusers", f"--root={root}",
                    os.path.join(UNIT_DIR, "attesto-local-vault.sysusers")], check=True)
    p = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                        os.path.join(UNIT_DIR, "attesto-local-vault.tmpfiles")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    st = os.stat(root / "var/lib/attesto")
    assert oct(st.st_mode & 0o7777) == "0o750"
    # Owned by the account and group sysusers.d made in that root.
    passwd = {l.split(":")[0]: l.split(":") for l in (root / "etc/passwd").read_text().splitlines()}
    groups = {l.split(":")[0]: l.split(":") for l in (root / "etc/group").read_text().splitlines()}
    assert (st.st_uid, st.st_gid) == (int(passwd[user][2]), int(groups[group][2]))
