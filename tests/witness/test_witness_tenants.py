# SPDX-License-Identifier: Apache-2.0
"""Tenants are authorized, not claimed (issue 14 item 4): witness-serve on a
fresh SoftHSM token with a tenants file. The authorization matrix (unix peer
by uid and gid, TCP by bearer secret, no tenants file), the quotas (507 for
streams, 429 per day) and a bad file that stops the start; after every
refusal the database holds nothing new."""
import hashlib
import json
import os
import sqlite3

import pytest

from witnesslib import DbView, Server, Vault, h, request_body, snapshot, verify_document

A, B = "ten_a", "ten_b"
SECRET_A, SECRET_B = "secret-of-tenant-a", "secret-of-tenant-b"


def sha(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """One provisioned token for the module; each test has its own database."""
    return Vault(tmp_path_factory.mktemp("tenants"))


@pytest.fixture
def vault(token, request):
    return DbView(token, request.node.name)


def tenants(vault, text, mode=0o600):
    path = os.path.join(vault.dir, "tenants-" + os.path.basename(
        vault.env["ATTESTO_LOCAL_VAULT_WITNESS_DB"]))
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    env = dict(vault.env, ATTESTO_LOCAL_VAULT_WITNESS_TENANTS=path)
    return env, path


def stored(vault):
    """Everything stored, the quota's day counts included."""
    snap = snapshot(vault)
    if snap is None:
        return None
    con = sqlite3.connect(f"file:{vault.env['ATTESTO_LOCAL_VAULT_WITNESS_DB']}?mode=ro",
                          uri=True)
    try:
        snap["tenant_days"] = con.execute("SELECT * FROM tenant_days ORDER BY 1,2,3").fetchall()
    finally:
        con.close()
    return snap


def refused(srv, vault, code, error, body, **kw):
    """Posts body, expects code with error, and nothing new stored."""
    before = stored(vault)
    status, headers, answer = srv.post(body, **kw)
    assert status == code, answer
    doc = json.loads(answer)
    assert doc["error"] == error and "\n" not in doc["message"], doc
    assert stored(vault) == before
    return headers, doc


def test_unix_peer_by_uid_submits_for_its_tenant_only(vault):
    me = os.getuid()
    env, _ = tenants(vault, f"# the test's uid is tenant A's only\n"
                            f"tenant {A} uid={me}\n"
                            f"tenant {B} uid={me + 1}\n")
    srv = Server(vault, env=env)
    try:
        status, _, body = srv.post(request_body(A, "s", "c0", 0, h(0)))
        assert status == 200, body
        verify_document(body)
        _, doc = refused(srv, vault, 403, "forbidden", request_body(B, "s", "c0", 0, h(0)))
        assert B in doc["message"]
        # The rate limit and the quotas count the authorized tenant only.
        assert srv.post(request_body(A, "s", "c1", 1, h(1), h(0)))[0] == 200
    finally:
        assert srv.stop() == 0


def test_unix_peer_by_gid(vault):
    env, _ = tenants(vault, f"tenant {A} gid={os.getgid()}\n")
    srv = Server(vault, env=env)
    try:
        assert srv.post(request_body(A, "s", "c0", 0, h(0)))[0] == 200
        refused(srv, vault, 403, "forbidden", request_body(B, "s", "c0", 0, h(0)))
    finally:
        assert srv.stop() == 0


def test_unix_peer_not_in_the_file_is_401(vault):
    env, _ = tenants(vault, f"tenant {A} uid={os.getuid() + 1} gid={os.getgid() + 1}\n")
    srv = Server(vault, env=env)
    try:
        _, doc = refused(srv, vault, 401, "unauthorized", request_body(A, "s", "c0", 0, h(0)))
        assert f"uid {os.getuid()}" in doc["message"]
        # Not even the body is looked at: a malformed one is 401 too.
        refused(srv, vault, 401, "unauthorized", {"junk": 1})
        assert srv.request("GET", "/healthz")[0] == 200
    finally:
        assert srv.stop() == 0


def test_tcp_bearer_matrix(vault):
    env, _ = tenants(vault, f"tenant {A} bearer-sha256={sha(SECRET_A)}\n"
                            f"tenant {B} bearer-sha256={sha(SECRET_B)} uid={os.getuid() + 1}\n")
    srv = Server(vault, env=env)
    body = request_body(A, "s", "c0", 0, h(0))
    try:
        # the right secret
        status, _, answer = srv.post(body, tcp=True,
                                     headers={"Authorization": f"Bearer {SECRET_A}"})
        assert status == 200, answer
        verify_document(answer)
        # a wrong secret, none, another scheme: 401 with a challenge
        for hd in ({"Authorization": "Bearer not-the-secret"}, {},
                   {"Authorization": f"Basic {SECRET_A}"},
                   {"Authorization": f"Bearer {sha(SECRET_A)}"}):  # the digest is no secret
            headers, doc = refused(srv, vault, 401, "unauthorized",
                                   request_body(A, "s", "c1", 1, h(1), h(0)), tcp=True,
                                   headers=hd)
            assert headers["www-authenticate"].startswith("Bearer")
            assert SECRET_A not in doc["message"]
        # another tenant's secret
        _, doc = refused(srv, vault, 403, "forbidden", request_body(A, "s", "c1", 1, h(1), h(0)),
                         tcp=True, headers={"Authorization": f"Bearer {SECRET_B}"})
        assert A in doc["message"]
        # the unix socket's caller (this uid) is in no tenant's line
        refused(srv, vault, 401, "unauthorized", request_body(A, "s", "c1", 1, h(1), h(0)))
        # reads need no secret
        assert srv.request("GET", "/healthz", tcp=True)[0] == 200
        assert srv.request("GET", "/v1/witness/identity", tcp=True)[0] == 200
    finally:
        assert srv.stop() == 0


def test_tcp_without_tenants_file_refuses_posts(vault):
    srv = Server(vault)
    try:
        _, doc = refused(srv, vault, 403, "forbidden", request_body(A, "s", "c0", 0, h(0)),
                         tcp=True, headers={"Authorization": f"Bearer {SECRET_A}"})
        assert "ATTESTO_LOCAL_VAULT_WITNESS_TENANTS" in doc["message"]
        # The unix socket is as before: its group is the authorization.
        assert srv.post(request_body(A, "s", "c0", 0, h(0)))[0] == 200
        assert srv.post(request_body(B, "s", "c0", 0, h(0)))[0] == 200
        assert srv.request("GET", "/healthz", tcp=True)[0] == 200
    finally:
        assert srv.stop() == 0


def test_quota_streams_is_507_before_anything_is_written(vault):
    env, _ = tenants(vault, f"tenant {A} uid={os.getuid()} max-streams=2\n"
                            f"tenant {B} uid={os.getuid()}\n")
    srv = Server(vault, env=env)
    try:
        assert srv.post(request_body(A, "s1", "c0", 0, h(1, 0)))[0] == 200
        assert srv.post(request_body(A, "s2", "c0", 0, h(2, 0)))[0] == 200
        _, doc = refused(srv, vault, 507, "quota_streams", request_body(A, "s3", "c0", 0, h(3)))
        assert "max-streams" in doc["message"] and "2" in doc["message"]
        # Streams it has go on; replays answer; another tenant is not affected.
        assert srv.post(request_body(A, "s1", "c1", 1, h(1, 1), h(1, 0)))[0] == 200
        assert srv.post(request_body(A, "s2", "c0", 0, h(2, 0)))[0] == 200
        assert srv.post(request_body(B, "s3", "c0", 0, h(3)))[0] == 200
    finally:
        assert srv.stop() == 0


def test_quota_per_day_is_429_before_anything_is_written(vault):
    env, _ = tenants(vault, "defaults max-statements-per-day=3\n"
                            f"tenant {A} uid={os.getuid()}\n"
                            f"tenant {B} uid={os.getuid()} max-statements-per-day=0\n")
    srv = Server(vault, env=env)
    try:
        assert srv.post(request_body(A, "s", "c0", 0, h(0)))[0] == 200
        assert srv.post(request_body(A, "s", "c1", 1, h(1), h(0)))[0] == 200
        # fork evidence is a stored statement too
        assert srv.post(request_body(A, "s", "cx", 1, h("x"), h(0)))[0] == 409
        headers, doc = refused(srv, vault, 429, "quota_statements_per_day",
                               request_body(A, "s", "c2", 2, h(2), h(1)))
        assert 0 < int(headers["retry-after"]) <= 86400
        assert "max-statements-per-day" in doc["message"]
        refused(srv, vault, 429, "quota_statements_per_day",
                request_body(A, "t", "c0", 0, h("t")))
        # What is stored is still served: a replay and the same fork evidence.
        assert srv.post(request_body(A, "s", "c1", 1, h(1), h(0)))[0] == 200
        assert srv.post(request_body(A, "s", "cx", 1, h("x"), h(0)))[0] == 409
        # 0: no limit for B
        for seq in range(5):
            prev = h("b", seq - 1) if seq else None
            assert srv.post(request_body(B, "s", f"c{seq}", seq, h("b", seq), prev))[0] == 200
        day = stored(vault)["tenant_days"]
        assert [(t, n) for _, t, _, n in day] == [(A, 3), (B, 5)]
    finally:
        assert srv.stop() == 0


BAD = [
    ("tenant ten_a\n", "line 1: tenant ten_a: names no caller"),
    ("tenant ten_a uid=x\n", "line 1: uid: must be a whole number"),
    ("tenant ten_a uid=4294967295\n", "line 1: uid: must be a whole number"),
    ("# c\ntenant ten_a bearer-sha256=abc\n", "line 2: bearer-sha256: must be 64 lowercase hex"),
    ("tenant ten_a bearer-sha256=" + "A" * 64 + "\n", "line 1: bearer-sha256: must be 64"),
    ("tenant ten_a uid=1 colour=blue\n", "line 1: colour: unknown field"),
    ("tenant ten_a uid=1\ntenant ten_a uid=2\n", "line 2: tenant ten_a: already on line 1"),
    (f"tenant ten_a bearer-sha256={sha('s')}\ntenant ten_b bearer-sha256={sha('s')}\n",
     "line 2: bearer-sha256: already names tenant ten_a on line 1"),
    ("tenant ten_a uid=1 max-streams=-1\n", "line 1: max-streams: must be a whole number"),
    ("tennant ten_a uid=1\n", "line 1: tennant: unknown line"),
    ("tenant bad!id uid=1\n", "line 1: tenant id: must be 1-128 bytes"),
    ("tenant ten_a uid=1\r\n", "line 1: carriage return"),
    ("# nothing\n", "no tenant line"),
    ("defaults max-streams=1\ndefaults max-streams=2\ntenant a uid=1\n",
     "line 2: defaults: given twice"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(":")[-1][:30] for _, m in BAD])
def test_bad_tenants_file_stops_the_start(vault, text, message):
    env, path = tenants(vault, text)
    p = vault.run(["witness-serve", "--listen", "127.0.0.1:1"], env=env, check=2)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and path in lines[0], p.stderr
    assert snapshot(vault) is None  # not even a database


def test_tenants_file_that_others_may_write_stops_the_start(vault):
    for mode in (0o602, 0o620, 0o666):
        env, path = tenants(vault, f"tenant {A} uid={os.getuid()}\n", mode)
        p = vault.run(["witness-serve", "--listen", "127.0.0.1:1"], env=env, check=2)
        assert "group or others may write it" in p.stderr and len(p.stderr.splitlines()) == 1
    p = vault.run(["--witness-tenants", path + ".missing", "witness-serve", "--listen",
                   "127.0.0.1:1"], check=2)
    assert path + ".missing" in p.stderr
    assert snapshot(vault) is None


def test_schema_2_counts_the_history_already_stored(vault):
    """A schema-1 database gets its day counts from its history at the
    migration; the CLI's statements count towards the day too."""
    from witnesslib import cli_args
    vault.run(cli_args(A, "s", "c0", 0, h(0)), check=0)
    vault.run(cli_args(A, "s", "c1", 1, h(1), h(0)), check=0)
    vault.run(cli_args(A, "s", "cx", 1, h("x"), h(0)), check=3)      # fork evidence
    vault.run(cli_args(B, "s", "c0", 0, h("b")), check=0)
    path = vault.env["ATTESTO_LOCAL_VAULT_WITNESS_DB"]
    before = stored(vault)["tenant_days"]
    assert [(w, t, n) for w, t, _, n in before] == [("inst-test", A, 3), ("inst-test", B, 1)]
    con = sqlite3.connect(path)
    con.executescript("DROP TABLE tenant_days; PRAGMA user_version = 1;")
    con.close()
    vault.run(cli_args(A, "s", "c1", 1, h(1), h(0)), check=0)        # a replay: opens, migrates
    assert stored(vault)["tenant_days"] == before
    # ... and the quota sees them: A has used 3 of 3 today.
    env, _ = tenants(vault, f"tenant {A} uid={os.getuid()} max-statements-per-day=3\n")
    srv = Server(vault, env=env)
    try:
        refused(srv, vault, 429, "quota_statements_per_day",
                request_body(A, "s", "c2", 2, h(2), h(1)))
    finally:
        assert srv.stop() == 0
