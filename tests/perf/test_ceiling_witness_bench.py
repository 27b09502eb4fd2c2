# SPDX-License-Identifier: Apache-2.0
"""The witness benchmark's ceiling programs work (bench/witness_bench.c):
the durable-commit loop writes real rows to a WAL database, the sign loop
signs on a real token; commit and load print the rate and the count (the
count divides the CPU time bench/witness reads). Tiny durations; no timing
is asserted."""
import os
import sqlite3
import subprocess

import lvtest

BENCH = os.environ["LV_WITNESS_BENCH"]


def run(args, env=None):
    p = subprocess.run([BENCH, *args], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_commit_loop_commits_rows_in_wal_mode(tmp_path):
    db = tmp_path / "commit.sqlite3"
    rate, count = run(["commit", "0.2", str(db)])
    assert float(rate) > 0
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT count(*) FROM r").fetchone()[0] == int(count) >= 1


def test_sign_loop_signs_on_the_token(tmp_path):
    vault = lvtest.Vault(tmp_path)
    assert float(run(["sign", "0.2"], env=vault.env)[0]) > 0


def test_bad_arguments_exit_2():
    p = subprocess.run([BENCH, "frobnicate"], capture_output=True, text=True)
    assert p.returncode == 2 and "usage" in p.stderr
