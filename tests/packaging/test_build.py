# SPDX-License-Identifier: Apache-2.0
"""scripts/package builds the .deb and the .rpm from a fresh clone.
The clone holds what is committed: uncommitted edits are not in it."""
import os
import shutil
import subprocess

import lvtest
import pkglib


def test_scripts_package_builds_both_packages_from_a_fresh_clone():
    shutil.rmtree(pkglib.WORK, ignore_errors=True)
    os.makedirs(pkglib.WORK)
    subprocess.run(["git", "clone", "-q", "--no-local", lvtest.SOURCE_DIR, pkglib.CLONE], check=True)
    head = pkglib.sh(["git", "-C", pkglib.CLONE, "rev-parse", "HEAD"]).strip()
    p = subprocess.run([os.path.join(pkglib.CLONE, "scripts", "package"), "--no-lint"],
                       cwd=pkglib.CLONE, env=dict(os.environ, LV_DIST_DIR=pkglib.DIST),
                       capture_output=True, text=True, timeout=850)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "uncommitted" not in p.stderr, p.stderr
    for pkg in pkglib.PACKAGES:
        assert os.path.isfile(pkglib.deb(pkg)), os.listdir(pkglib.DIST)
        assert os.path.isfile(pkglib.rpm(pkg)), os.listdir(pkglib.DIST)
    # Both say which commit they were built from and carry the CMake version.
    info = pkglib.sh(["dpkg-deb", "-f", pkglib.deb(), "Version"]).strip()
    assert info == pkglib.version()
    changelog = pkglib.sh(["rpm", "-qp", "--changelog", pkglib.rpm()])
    assert head in changelog, changelog
    assert pkglib.sh(["rpm", "-qp", "--qf", "%{VERSION}", pkglib.rpm()]) == pkglib.version()
    # The clone was left as it was: the build happened in a temp directory.
    assert pkglib.sh(["git", "-C", pkglib.CLONE, "status", "--porcelain", "--ignored"]).strip() == ""
