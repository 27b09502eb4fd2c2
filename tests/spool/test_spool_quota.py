# SPDX-License-Identifier: Apache-2.0
"""The spool quota (docs/spool.md "Quota") through `enqueue`: items not yet
delivered and their stored bytes; what would pass it is refused with exit 9
and one line naming the option, and nothing is written; a repeat of a stored
item is still answered; delivered items free room; the byte count kept by
triggers follows every state change and is computed for spools made before
it existed. A fresh SoftHSM token and real SQLite files."""
import copy
import json
import os
import sqlite3
import subprocess

import pytest

from lvtest import Vault

SPOOL_TOOL = os.environ.get("LV_SPOOL_TOOL",
                            os.path.join(os.environ.get("LV_BUILD_DIR", ""), "tests", "spool-tool"))
EXIT_QUOTA = 9


@pytest.fixture(scope="module")
def token_vault(tmp_path_factory):
    return Vault(tmp_path_factory.mktemp("token"))


@pytest.fixture
def v(token_vault, tmp_path):
    t = copy.copy(token_vault)
    t.dir = str(tmp_path)
    t.env = dict(token_vault.env)
    t.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = str(tmp_path / "spool.sqlite3")
    return t


def spool(v):
    return v.env["ATTESTO_LOCAL_VAULT_SPOOL_DB"]


def rows(v):
    with sqlite3.connect(spool(v)) as c:
        return (c.execute("SELECT * FROM items ORDER BY id").fetchall(),
                c.execute("SELECT * FROM conflicts ORDER BY id").fetchall())


def held(v):
    """(items not yet delivered, their bytes) counted from the rows, and the
    byte counter the triggers keep."""
    with sqlite3.connect(spool(v)) as c:
        n, b = c.execute("SELECT count(*), coalesce(sum(length(envelope) + length(payload)), 0)"
                         " FROM items WHERE state <> 'receipted'").fetchone()
        (kept,) = c.execute("SELECT n FROM counts WHERE name = 'held_bytes'").fetchone()
    return n, b, kept


def enqueue(v, ref, payload="{}", quota=(), check=0):
    return v.run([*quota, "enqueue", "--stream-id", "str_1", "--source-ref", ref,
                  "--payload-file", "-"], input=payload, check=check)


def batch(v, refs, quota=(), check=0, streams=False):
    path = os.path.join(v.dir, "batch.jsonl")
    with open(path, "w") as f:
        for r in refs:
            f.write(json.dumps({"stream_id": f"s-{r}" if streams else "str_1", "source_ref": r,
                                "payload": {"r": r}}) + "\n")
    return v.run([*quota, "enqueue", "--jsonl", path], check=check)


def tool(v, *args):
    p = subprocess.run([SPOOL_TOOL, *args], env=v.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def one_line(p, needle):
    err = p.stderr.strip()
    assert "\n" not in err, err
    assert err.startswith("enqueue: spool quota: "), err
    assert needle in err and "nothing written" in err, err


def test_enqueue_past_the_item_quota_exits_9_and_writes_nothing(v):
    q = ["--spool-max-items", "3"]
    for ref in ("a", "b", "c"):
        enqueue(v, ref, quota=q)
    before = rows(v)
    p = enqueue(v, "d", quota=q, check=EXIT_QUOTA)
    one_line(p, "--spool-max-items")
    assert "4 items not yet delivered with these 1, over the limit of 3" in p.stderr
    assert p.stdout == ""
    assert rows(v) == before


def test_a_repeat_is_answered_when_the_spool_is_full(v):
    q = ["--spool-max-items", "1"]
    enqueue(v, "a", '{"n":1}', quota=q)
    p = enqueue(v, "a", '{"n":1}', quota=q, check=0)
    assert json.loads(p.stdout)["status"] == "duplicate"
    before = rows(v)
    # A drift of a stored item is a conflict, recorded as ever: it adds no item.
    p = enqueue(v, "a", '{"n":2}', quota=q, check=4)
    assert json.loads(p.stdout)["status"] == "conflict"
    assert rows(v)[0] == before[0]


def test_a_batch_that_would_pass_the_quota_writes_nothing(v):
    q = ["--spool-max-items", "5"]
    batch(v, ["a", "b", "c"], quota=q)
    before = rows(v)
    p = batch(v, ["b", "d", "e", "f"], quota=q, check=EXIT_QUOTA)  # b: a repeat, 3 new
    one_line(p, "--spool-max-items")
    assert p.stdout == ""
    assert rows(v) == before
    batch(v, ["b", "d", "e"], quota=q)  # 2 new: fits exactly
    assert held(v)[0] == 5


def test_a_batch_of_several_groups_is_refused_before_its_first_group(v):
    """A batch commits 256 items a group; the quota is held before the first."""
    before = rows(v) if os.path.exists(spool(v)) else None
    p = batch(v, [f"r{i}" for i in range(300)], quota=["--spool-max-items", "299"],
              check=EXIT_QUOTA)
    one_line(p, "300 items not yet delivered with these 300, over the limit of 299")
    assert p.stdout == ""
    assert before is None and rows(v) == ([], [])


def test_the_byte_quota_counts_envelopes_and_sealed_payloads(v):
    enqueue(v, "a", json.dumps({"x": "y" * 1000}))
    n, b, kept = held(v)
    assert n == 1 and kept == b and b > 1000
    # Room for less than the same item again: refused, naming the option.
    q = ["--spool-max-bytes", str(2 * b - 1)]
    before = rows(v)
    p = enqueue(v, "b", json.dumps({"x": "z" * 1000}), quota=q, check=EXIT_QUOTA)
    one_line(p, "--spool-max-bytes")
    assert rows(v) == before
    enqueue(v, "b", json.dumps({"x": "z" * 1000}), quota=["--spool-max-bytes", str(2 * b + 64)])


def test_delivered_items_free_room(v):
    q = ["--spool-max-items", "2"]
    enqueue(v, "a", quota=q)
    enqueue(v, "b", quota=q)
    enqueue(v, "c", quota=q, check=EXIT_QUOTA)
    (lease,) = tool(v, "lease", "drain-q", "60000", "10")  # one per stream
    tool(v, "receipt", str(lease["id"]), "drain-q", '{"receipt":{}}')
    enqueue(v, "c", quota=q)
    enqueue(v, "d", quota=q, check=EXIT_QUOTA)


def test_the_quota_is_read_from_the_environment_and_0_lifts_it(v):
    env = dict(v.env, ATTESTO_LOCAL_VAULT_SPOOL_MAX_ITEMS="1")
    v.run(["enqueue", "--stream-id", "s", "--source-ref", "a"], env=env, check=0)
    p = v.run(["enqueue", "--stream-id", "s", "--source-ref", "b"], env=env, check=EXIT_QUOTA)
    assert "--spool-max-items" in p.stderr
    # The flag wins over the environment; 0 is no limit.
    v.run(["--spool-max-items", "0", "enqueue", "--stream-id", "s", "--source-ref", "b"], env=env,
          check=0)


def test_the_byte_counter_follows_every_state_change(v):
    batch(v, [f"r{i}" for i in range(6)], streams=True)  # six heads: six leases
    assert held(v)[1] == held(v)[2]
    leases = tool(v, "lease", "drain-x", "60000", "10")
    assert len(leases) == 6
    assert held(v)[1] == held(v)[2]
    tool(v, "receipt", str(leases[0]["id"]), "drain-x", '{"receipt":{}}')
    tool(v, "receipt", str(leases[1]["id"]), "drain-x", '{"receipt":{}}')
    tool(v, "dead", str(leases[2]["id"]), "drain-x", "http_400")
    tool(v, "retry", str(leases[3]["id"]), "drain-x", "http_503", "0")
    n, b, kept = held(v)
    assert n == 4 and kept == b
    v.run(["dead-letter", "requeue", "--all"], check=0)
    v.run(["purge", "--receipted-before", "2999-01-01"], check=0)
    n, b, kept = held(v)
    assert n == 4 and kept == b
    s = json.loads(v.run(["--spool-max-items", "10", "status", "--json"], check=0).stdout)
    assert s["quota"] == {"items": 4, "bytes": b, "max_items": 10,
                          "max_bytes": 2 * 1024 * 1024 * 1024}


def test_a_spool_from_before_the_quota_gets_its_count_on_open(v):
    batch(v, ["a", "b", "c"])
    (lease,) = tool(v, "lease", "drain-m", "60000", "10")
    tool(v, "receipt", str(lease["id"]), "drain-m", '{"receipt":{}}')
    n, b, _ = held(v)
    # Back to the schema before the quota: no counter, no triggers.
    with sqlite3.connect(spool(v)) as c:
        c.execute("DROP TRIGGER items_held_ins")
        c.execute("DROP TRIGGER items_held_del")
        c.execute("DROP TRIGGER items_held_upd")
        c.execute("DELETE FROM counts WHERE name = 'held_bytes'")
        # And without what schema 4 added (the wrap algorithm of each DEK).
        c.execute("ALTER TABLE deks DROP COLUMN wrap_alg")
        c.execute("ALTER TABLE deks DROP COLUMN wrap_mechanism")
        c.execute("PRAGMA user_version = 2")
    s = json.loads(v.run(["status", "--json"], check=0).stdout)  # read-only: not migrated
    assert s["quota"]["items"] == 2
    enqueue(v, "d", quota=["--spool-max-items", "3"])  # migrates, then counts
    n2, b2, kept = held(v)
    assert n2 == n + 1 and kept == b2 > b
    with sqlite3.connect(spool(v)) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 4


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "9007199254740993", " 5"])
def test_a_bad_quota_value_is_a_usage_error(v, value):
    p = v.run(["--spool-max-items", value, "enqueue", "--stream-id", "s", "--source-ref", "a"],
              check=2)
    assert p.stderr.strip() == (f"attesto-local-vault: --spool-max-items: {value}: must be a whole"
                                " number from 0 (no limit) to 2^53")
    assert not os.path.exists(spool(v))
