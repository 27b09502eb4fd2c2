# SPDX-License-Identifier: Apache-2.0
"""The .rpm: the same payload as the .deb, rpmlint, automatic requires,
scriptlets."""
import gzip
import hashlib
import os
import subprocess

import pytest

import pkglib
from pkglib import NAME, sh


def files_of_deb(pkg):
    listing = sh(["dpkg-deb", "-c", pkglib.deb(pkg)])
    files = {}
    for line in listing.splitlines():
        perms, _owner, _size, _date, _time, path = line.split(None, 5)
        path = path.split(" -> ")[0]
        if not perms.startswith("d"):
            files[path[1:]] = perms
    return files


def files_of_rpm(pkg):
    listing = sh(["rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", pkglib.rpm(pkg)])
    return {path: perms for perms, path in (l.split(" ", 1) for l in listing.splitlines())
            if not perms.startswith("d")}


@pytest.mark.parametrize("pkg", pkglib.PACKAGES)
def test_rpm_payload_is_the_deb_payload(pkg):
    deb, rpm = files_of_deb(pkg), files_of_rpm(pkg)
    assert set(deb) - pkglib.deb_only(pkg) == set(rpm) - pkglib.rpm_only(pkg), (
        f"only in .deb: {sorted(set(deb) - set(rpm))}\nonly in .rpm: {sorted(set(rpm) - set(deb))}")
    for path in set(deb) & set(rpm):
        assert deb[path] == rpm[path], f"{path}: mode {deb[path]} in .deb, {rpm[path]} in .rpm"
    # The rpm -qlp listing the task names agrees with the query above.
    qlp = set(sh(["rpm", "-qlp", pkglib.rpm(pkg)]).split())
    assert set(rpm) <= qlp


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """The payloads of both formats, all packages, unpacked: (deb root, rpm root)."""
    d = tmp_path_factory.mktemp("deb")
    r = tmp_path_factory.mktemp("rpm")
    for pkg in pkglib.PACKAGES:
        sh(["dpkg-deb", "-x", pkglib.deb(pkg), str(d)])
        rpm2cpio = subprocess.Popen(["rpm2cpio", pkglib.rpm(pkg)], stdout=subprocess.PIPE)
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=rpm2cpio.stdout, cwd=r, check=True)
        assert rpm2cpio.wait() == 0
    return d, r


@pytest.mark.parametrize("pkg", pkglib.PACKAGES)
def test_non_binary_files_are_byte_identical(trees, pkg):
    d, r = trees
    for path in set(files_of_deb(pkg)) & set(files_of_rpm(pkg)):
        a, b = (d / path.lstrip("/")).read_bytes(), (r / path.lstrip("/")).read_bytes()
        if a.startswith(b"\x7fELF"):
            assert b.startswith(b"\x7fELF"), path
            continue  # two builds of the same source; compared by behaviour below
        if path.endswith(".gz"):
            a, b = gzip.decompress(a), gzip.decompress(b)
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), path


def test_both_binaries_report_the_same_version(trees):
    d, r = trees
    outs = [subprocess.run([str(t / "usr/bin/attesto-local-vault"), "--version"],
                           capture_output=True, text=True) for t in (d, r)]
    assert outs[0].returncode == outs[1].returncode == 0
    assert outs[0].stdout == outs[1].stdout == f"attesto-local-vault {pkglib.version()}\n"


def test_receiver_is_only_in_the_tools_package():
    assert "/usr/bin/attesto-local-vault-receiver" in files_of_rpm(pkglib.TOOLS)
    assert not [f for f in files_of_rpm(pkglib.NAME) if "receiver" in f]
    assert not [f for f in files_of_rpm(pkglib.TOOLS) if f.startswith(("/etc", "/lib/systemd"))]


def test_rpmlint_reports_no_errors_and_every_warning_is_justified():
    p = subprocess.run(["rpmlint", "-c", os.path.join(pkglib.CLONE, "packaging/rpm/rpmlint.toml"),
                        "-r", os.path.join(pkglib.CLONE, "packaging/rpm/rpmlintrc")]
                       + [pkglib.rpm(pkg) for pkg in pkglib.PACKAGES],
                       capture_output=True, text=True)
    findings = pkglib.lint_findings(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not [f for f in findings if f[0] == "E"], p.stdout
    assert "0 errors" in p.stdout, p.stdout
    undocumented = {tag for sev, tag in findings if tag not in pkglib.documented_tags()}
    assert not undocumented, f"rpmlint warnings not justified in docs/packaging.md: {undocumented}"


@pytest.mark.parametrize("pkg,binary", [(pkglib.NAME, "attesto-local-vault"),
                                        (pkglib.TOOLS, "attesto-local-vault-receiver")])
def test_requires_are_automatic_and_never_name_softhsm(trees, pkg, binary):
    _, r = trees
    requires = sh(["rpm", "-qp", "--requires", pkglib.rpm(pkg)]).splitlines()
    sonames = pkglib.needed_sonames(str(r / "usr/bin" / binary))
    assert "libc.so.6" in sonames
    for soname in sonames:
        assert any(req.startswith(soname + "(") for req in requires), (soname, requires)
    assert not [req for req in requires if "softhsm" in req.lower()]
    for tag in ("RECOMMENDS", "SUGGESTS", "SUPPLEMENTS", "ENHANCES"):
        assert "softhsm" not in sh(["rpm", "-qp", "--qf", f"[%{{{tag}}}\n]", pkglib.rpm(pkg)]).lower()


def test_config_file_and_scriptlets():
    assert sh(["rpm", "-qp", "--configfiles", pkglib.rpm()]).split() == ["/etc/attesto/local-vault.env"]
    scripts = sh(["rpm", "-qp", "--scripts", pkglib.rpm()])
    assert f"systemd-sysusers /usr/lib/sysusers.d/{NAME}.conf" in scripts
    assert f"systemd-tmpfiles --create /usr/lib/tmpfiles.d/{NAME}.conf" in scripts
    assert "daemon-reload" in scripts
