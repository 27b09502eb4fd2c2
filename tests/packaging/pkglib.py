# SPDX-License-Identifier: Apache-2.0
"""Shared by the packaging tests: where scripts/package put the packages
(packaging_build) and how to read them."""
import os
import re
import subprocess

import lvtest

NAME = "attesto-local-vault"
TOOLS = NAME + "-tools"
PACKAGES = [NAME, TOOLS]
WORK = os.path.join(lvtest.BUILD_DIR, "packaging-test")
DIST = os.path.join(WORK, "dist")
CLONE = os.path.join(WORK, "clone")  # the fresh clone the packages were built from
DOCS = os.path.join(lvtest.SOURCE_DIR, "docs", "packaging.md")



def deb_only(pkg):
    """Files only the .deb carries, by Debian's convention (docs/packaging.md, "Same payload")."""
    return {f"/usr/share/doc/{pkg}/changelog.gz"}


def rpm_only(pkg):
    """Files only the .rpm carries, by RPM's convention."""
    return {f"/usr/share/licenses/{pkg}/LICENSE"}


def sh(args, **kw):
    kw.setdefault("check", True)
    return subprocess.run(args, capture_output=True, text=True, **kw).stdout


def version():
    text = open(os.path.join(CLONE, "CMakeLists.txt")).read()
    return re.search(r"project\(attesto-local-vault VERSION ([0-9.]+)", text).group(1)


def deb(pkg=NAME):
    arch = sh(["dpkg", "--print-architecture"]).strip()
    return os.path.join(DIST, f"{pkg}_{version()}_{arch}.deb")


def rpm(pkg=NAME):
    arch = sh(["rpm", "--eval", "%{_arch}"]).strip()
    return os.path.join(DIST, f"{pkg}-{version()}-1.{arch}.rpm")


def needed_sonames(binary):
    out = sh(["objdump", "-p", binary])
    return re.findall(r"^\s*NEEDED\s+(\S+)$", out, re.M)


def resolved_libraries(binary):
    """{soname: path} as the dynamic loader resolves them on this system."""
    out = sh(["ldd", binary])
    return dict(re.findall(r"^\s*(\S+) => (/\S+)", out, re.M))


def owning_package(path):
    """The Debian package that ships path (tried as given and with symlinks
    resolved, as /lib and /usr/lib may be either on Debian 12)."""
    for p in (path, os.path.realpath(path)):
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0]
    raise AssertionError(f"no package ships {path}")


def documented_tags():
    """The lintian/rpmlint tags that docs/packaging.md justifies (written `tag`)."""
    return set(re.findall(r"`([a-z0-9][a-z0-9%.+-]*)`", open(DOCS).read()))


def lint_findings(lines):
    """[(severity letter, tag)] from lintian ("W: pkg: tag ...") or rpmlint
    ("pkg.arch: W: tag ...") output."""
    out = []
    for line in lines.splitlines():
        m = re.match(r"^([EWIXPO]): \S+: (\S+)", line) or re.match(r"^\S+: ([EW]): (\S+)", line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out
