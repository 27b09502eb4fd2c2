# SPDX-License-Identifier: Apache-2.0
"""Disk faults under enqueue, on real small file systems (tmpfs): a full disk
and a read-only spool. Enqueue fails with one clear line and exit 1, nothing
partial is stored, earlier items stay intact and readable, and once the disk
is fixed the same enqueue succeeds as if the failed one never happened."""
import json
import os
import subprocess

import pytest

import lvtest
from faultlib import ClonedVault, fill, remount, spool_rows, tmpfs


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return lvtest.Vault(tmp_path_factory.mktemp("template"))


@pytest.fixture
def vault(tmp_path, template):
    v = ClonedVault(template, tmp_path / "vault")
    v.mnt = str(tmp_path / "mnt")
    v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = os.path.join(v.mnt, "spool.sqlite3")
    v.db = v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]
    return v


def enqueue(v, ref, payload, stream="s1"):
    return v.run(["enqueue", "--stream-id", stream, "--source-ref", ref, "--payload-file", "-"],
                 input=json.dumps(payload))


def payload_of(v, ref):
    p = v.run(["show", f"local-vault:inst-test:{ref}", "--payload", "--json"], check=0)
    return json.loads(p.stdout)


def assert_one_line_failure(p, *words):
    assert p.returncode == 1, f"exit {p.returncode}, expected 1\n{p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line of error, got {p.stderr!r}"
    assert lines[0].startswith("enqueue: "), lines[0]
    low = lines[0].lower()
    assert any(w in low for w in words), f"{lines[0]!r} names none of {words}"
    assert p.stdout == "", f"nothing is reported stored: {p.stdout!r}"


def assert_earlier_intact(v, before, payloads):
    assert spool_rows(v.db) == before
    for ref, payload in payloads.items():
        shown = payload_of(v, ref)
        assert shown["state"] == "queued"
        assert shown["payload"] == payload, ref


def test_full_disk_fails_the_enqueue_and_keeps_earlier_items(vault):
    with tmpfs(vault.mnt, "1m"):
        payloads = {f"r{i}": {"i": i, "text": "earlier item"} for i in range(3)}
        for ref, p in payloads.items():
            assert enqueue(vault, ref, p).returncode == 0
        before = spool_rows(vault.db)
        assert len(before) == 3
        filler = fill(vault.mnt, leave=8192)

        big = {"blob": os.urandom(48 * 1024).hex()}
        p = enqueue(vault, "big", big)
        assert_one_line_failure(p, "full", "no space")
        assert_earlier_intact(vault, before, payloads)
        # A second try on the still-full disk fails the same way and still
        # stores nothing (no half-written item that would later read as a
        # duplicate or a conflict).
        assert_one_line_failure(enqueue(vault, "big", big), "full", "no space")
        assert spool_rows(vault.db) == before

        os.unlink(filler)
        p = enqueue(vault, "big", big)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["status"] == "queued"
        assert spool_rows(vault.db)[:3] == before
        assert payload_of(vault, "big")["payload"] == big


def test_full_disk_before_the_spool_exists(vault):
    with tmpfs(vault.mnt, "256k"):
        filler = fill(vault.mnt, leave=0)
        p = enqueue(vault, "first", {"a": 1})
        assert_one_line_failure(p, "full", "no space")
        os.unlink(filler)
        # Whatever the failed creation left behind, the spool works now.
        p = enqueue(vault, "first", {"a": 1})
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["status"] == "queued"
        assert [r[0] for r in spool_rows(vault.db)] == ["local-vault:inst-test:first"]


def test_full_disk_in_the_middle_of_a_batch_keeps_whole_groups(vault):
    # 300 items of ~3.6 KiB on 1280 KiB: the first group of 256 items commits
    # and the second does not fit (measured: payloads of 1300-1650 random bytes
    # do this; 1500 sits in the middle). Sizes are deterministic.
    items = [{"stream_id": f"s{i % 7}", "source_ref": f"b{i}",
              "payload": {"i": i, "blob": os.urandom(1500).hex()}} for i in range(300)]
    batch = "".join(json.dumps(it) + "\n" for it in items)
    with tmpfs(vault.mnt, "1280k"):
        assert enqueue(vault, "r0", {"earlier": True}).returncode == 0
        before = spool_rows(vault.db)
        p = vault.run(["enqueue", "--jsonl", "-"], input=batch)
        assert p.returncode == 1, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        low = p.stderr.lower()
        assert "full" in low or "no space" in low, p.stderr

        rows = spool_rows(vault.db)
        assert rows[:1] == before
        stored = rows[1:]
        printed = [json.loads(l) for l in p.stdout.splitlines()]
        # What was printed is exactly what was stored: whole groups, in
        # batch order, each a complete row (envelope and sealed payload).
        assert [r[0] for r in stored] == [x["event_id"] for x in printed]
        assert [r[0] for r in stored] == [f"local-vault:inst-test:b{i}"
                                          for i in range(len(stored))]
        assert 0 < len(stored) < len(items), "the disk should fill part-way"
        assert len(stored) % 256 == 0, "groups of SPOOL_BATCH_GROUP items commit whole"
        assert all(r[1] == "queued" and r[4] > 0 and r[5] > 0 for r in stored)
        for x, r in zip(printed, stored):
            assert x["envelope_hash"] == r[2]
        last = len(stored) - 1
        shown = payload_of(vault, f"b{last}")
        assert shown["payload"] == items[last]["payload"]

        remount(vault.mnt, "size=16m")
        p = vault.run(["enqueue", "--jsonl", "-"], input=batch)
        assert p.returncode == 0, p.stderr
        again = [json.loads(l) for l in p.stdout.splitlines()]
        assert len(again) == len(items)
        for i, x in enumerate(again):
            if i < len(stored):
                assert x["status"] == "duplicate", x
                assert x["envelope_hash"] == stored[i][2]
            else:
                assert x["status"] == "queued", x
        assert len(spool_rows(vault.db)) == 1 + len(items)


def test_read_only_spool_fails_the_enqueue_and_keeps_earlier_items(vault):
    with tmpfs(vault.mnt, "4m"):
        payloads = {f"r{i}": {"i": i} for i in range(3)}
        for ref, p in payloads.items():
            assert enqueue(vault, ref, p).returncode == 0
        before = spool_rows(vault.db)
        remount(vault.mnt, "ro")
        try:
            p = enqueue(vault, "late", {"late": True})
            assert_one_line_failure(p, "read-only")
            assert vault.db in p.stderr
        finally:
            remount(vault.mnt, "rw")
        assert_earlier_intact(vault, before, payloads)
        p = enqueue(vault, "late", {"late": True})
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["status"] == "queued"


def test_spool_the_service_user_cannot_open_is_exit_1_not_a_token_problem(vault, tmp_path):
    # Regression: EACCES from the file system came back as LV_ERR_PIN
    # (-EACCES) and exit 5, sending the operator to the token.
    os.makedirs(vault.mnt)
    os.chmod(vault.mnt, 0o700)
    assert enqueue(vault, "r0", {"a": 1}).returncode == 0
    p = lvtest.run(["--spool-db", vault.db, "status"],
                   env={"PATH": "/usr/bin:/bin"}, check=None)
    assert p.returncode == 0, p.stderr
    # The binary itself (not the LV_VALGRIND wrapper, whose log directory
    # nobody may not write).
    binary = os.environ.get("LV_VALGRIND_REAL_BIN", lvtest.LV_BIN)
    p = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                        binary, "--spool-db", vault.db, "status"],
                       env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines() == [f"status: spool {vault.db}: Permission denied"]


def test_witness_database_the_service_user_cannot_open_is_exit_1(tmp_path):
    # Regression: the same EACCES-as-PIN-error class as the spool's.
    d = tmp_path / "private"
    d.mkdir(mode=0o700)
    db = d / "witness.sqlite3"
    db.write_bytes(b"")
    db.chmod(0o600)
    binary = os.environ.get("LV_VALGRIND_REAL_BIN", lvtest.LV_BIN)
    p = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                        binary, "--witness-db", str(db), "witness-forks"],
                       env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == f"witness-forks: witness database {db}: Permission denied"
