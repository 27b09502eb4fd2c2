# SPDX-License-Identifier: Apache-2.0
"""The .deb: lintian, payload, conffile, dependencies from dpkg-shlibdeps,
maintainer scripts."""
import os
import re
import subprocess

import pytest

import pkglib
from pkglib import NAME, sh

UNITS = ["attesto-local-vault.service", "attesto-local-vault-witness.service",
         "attesto-local-vault-witness.socket"]


def unpack(tmp_path_factory, pkg):
    root = tmp_path_factory.mktemp(pkg)
    sh(["dpkg-deb", "-x", pkglib.deb(pkg), str(root)])
    sh(["dpkg-deb", "-e", pkglib.deb(pkg), str(root / "DEBIAN")])
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return unpack(tmp_path_factory, NAME)


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    return unpack(tmp_path_factory, pkglib.TOOLS)


def test_lintian_reports_no_errors_and_every_warning_is_justified():
    debs = [os.path.join(pkglib.DIST, f) for f in os.listdir(pkglib.DIST) if f.endswith(".deb")]
    p = subprocess.run(["lintian", "--fail-on", "error", "--display-level", ">=warning"] + debs,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    findings = pkglib.lint_findings(p.stdout)
    assert not [f for f in findings if f[0] == "E"], p.stdout
    undocumented = {tag for sev, tag in findings if tag not in pkglib.documented_tags()}
    assert not undocumented, f"lintian warnings not justified in docs/packaging.md: {undocumented}"


def test_units_are_the_repository_files_in_lib_systemd_system(tree):
    for u in UNITS:
        packaged = tree / "lib/systemd/system" / u
        assert packaged.read_bytes() == open(os.path.join(pkglib.CLONE, "systemd", u), "rb").read()


def test_payload_has_binary_sysusers_tmpfiles_man_page_docs_and_copyright(tree):
    for f in ["usr/bin/attesto-local-vault", f"usr/lib/sysusers.d/{NAME}.conf",
              f"usr/lib/tmpfiles.d/{NAME}.conf", "usr/share/man/man1/attesto-local-vault.1.gz",
              f"usr/share/doc/{NAME}/copyright", f"usr/share/doc/{NAME}/operations.md",
              f"usr/share/doc/{NAME}/examples/softhsm.conf"]:
        assert (tree / f).is_file(), f
    assert os.access(tree / "usr/bin/attesto-local-vault", os.X_OK)


def test_example_environment_file_is_a_conffile(tree):
    assert (tree / "DEBIAN/conffiles").read_text().split() == ["/etc/attesto/local-vault.env"]
    env = (tree / "etc/attesto/local-vault.env").read_text()
    # Every setting commented out: an upgrade can never change a live value,
    # and no secret is in it.
    assert not [l for l in env.splitlines() if l.strip() and not l.startswith("#")]
    assert "PIN=" not in env.replace("PIN_FILE=", "")


def control_fields(root):
    control = (root / "DEBIAN/control").read_text()
    return dict(re.findall(r"^([A-Za-z-]+): (.*)$", control, re.M))


def check_shlibdeps(root, binary):
    fields = control_fields(root)
    depends = {d.strip().split()[0] for alt in fields["Depends"].split(",") for d in alt.split("|")}
    # Each shared library the binary needs maps to the package that provides
    # it on this system, and that package is a dependency.
    sonames = pkglib.needed_sonames(str(root / "usr/bin" / binary))
    assert "libc.so.6" in sonames
    resolved = pkglib.resolved_libraries(str(root / "usr/bin" / binary))
    for soname in sonames:
        owner = pkglib.owning_package(resolved[soname])
        assert owner in depends, f"{soname} ({owner}) missing from Depends: {fields['Depends']}"
    for f in ("Depends", "Pre-Depends", "Recommends", "Suggests", "Enhances"):
        assert "softhsm" not in fields.get(f, ""), fields
    return depends


def test_depends_come_from_shlibdeps_and_never_name_softhsm(tree):
    depends = check_shlibdeps(tree, "attesto-local-vault")
    # systemd-sysusers runs in postinst (misc:Depends from dh_installsysusers).
    assert "systemd" in depends


def test_tools_package_holds_the_receiver_and_nothing_of_the_service(tree, tools):
    assert (tools / "usr/bin/attesto-local-vault-receiver").is_file()
    assert (tools / "usr/share/man/man1/attesto-local-vault-receiver.1.gz").is_file()
    assert (tools / f"usr/share/doc/{pkglib.TOOLS}/copyright").is_file()
    # Its guide (staging included) goes with it, uncompressed like the product's docs.
    assert (tools / f"usr/share/doc/{pkglib.TOOLS}/receiver.md").read_bytes() == \
        open(os.path.join(pkglib.CLONE, "docs", "receiver.md"), "rb").read()
    assert not (tools / "etc").exists() and not (tools / "lib").exists()
    assert not (tree / "usr/bin/attesto-local-vault-receiver").exists()
    # It stands alone: no dependency on the product package.
    depends = check_shlibdeps(tools, "attesto-local-vault-receiver")
    assert NAME not in depends


def test_maintainer_scripts_create_the_user_and_reload_systemd(tree):
    postinst = (tree / "DEBIAN/postinst").read_text()
    postrm = (tree / "DEBIAN/postrm").read_text()
    prerm = (tree / "DEBIAN/prerm").read_text()
    assert f"systemd-sysusers" in postinst and f"{NAME}.conf" in postinst
    assert "systemd-tmpfiles" in postinst
    assert "daemon-reload" in postinst and "daemon-reload" in postrm
    # Nothing is enabled or started at installation (the operator configures first).
    assert "deb-systemd-invoke start" not in postinst
    assert "stop" in prerm
