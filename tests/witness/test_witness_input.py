# SPDX-License-Identifier: Apache-2.0
"""Bad input: exit 2 (CLI) or 400/413/415 (endpoint), one line naming the
field and the rule, and nothing stored — checked against a database that
already holds a head, so "nothing lost" is checked too."""
import json

import pytest

from witnesslib import MAX_SEQ, Server, Vault, cli_args, h, request_body, snapshot

T, S = "ten_1", "str_1"
GOOD = dict(tenant=T, stream=S, cid="chk_1", seq=1, chash=h("a", 1), prev=h("a", 0))

# (case id, field overrides, the field the message must name, a fragment of the rule)
BAD = [
    ("hash-short", {"chash": "ab" * 31}, "checkpoint_hash", "64 lowercase hex"),
    ("hash-long", {"chash": "a" * 65}, "checkpoint_hash", "64 lowercase hex"),
    ("hash-nonhex", {"chash": "g" * 64}, "checkpoint_hash", "outside [0-9a-f]"),
    ("hash-uppercase", {"chash": "A" * 64}, "checkpoint_hash", "outside [0-9a-f]"),
    ("hash-prefixed", {"chash": "0x" + "a" * 62}, "checkpoint_hash", "outside [0-9a-f]"),
    ("prev-nonhex", {"prev": "z" * 64}, "previous_checkpoint_hash", "64 lowercase hex"),
    ("prev-short", {"prev": "a"}, "previous_checkpoint_hash", "64 lowercase hex"),
    ("seq-negative", {"seq": -1}, "checkpoint_seq_no", "from 0 to 9007199254740991"),
    ("seq-too-large", {"seq": MAX_SEQ + 1}, "checkpoint_seq_no", "9007199254740991"),
    ("seq-huge", {"seq": 2**64}, "checkpoint_seq_no", "9007199254740991"),
    ("tenant-space", {"tenant": "ten 1"}, "tenant_id", "[A-Za-z0-9._:@/-]"),
    ("tenant-semicolon", {"tenant": "t;rm -rf"}, "tenant_id", "[A-Za-z0-9._:@/-]"),
    ("stream-too-long", {"stream": "s" * 129}, "stream_id", "1-128 bytes"),
    ("stream-unicode", {"stream": "str\u00fc"}, "stream_id", "[A-Za-z0-9._:@/-]"),
    ("checkpoint-id-quote", {"cid": 'chk"1'}, "checkpoint_id", "[A-Za-z0-9._:@/-]"),
    ("checkpoint-id-newline", {"cid": "chk\n1"}, "checkpoint_id", "[A-Za-z0-9._:@/-]"),
]
MISSING = ["tenant", "stream", "cid", "seq", "chash"]
CLI_FLAG = {"tenant": "--tenant-id", "stream": "--stream-id", "cid": "--checkpoint-id",
            "seq": "--checkpoint-seq-no", "chash": "--checkpoint-hash",
            "prev": "--previous-checkpoint-hash"}
JSON_NAME = {"tenant": "tenant_id", "stream": "stream_id", "cid": "checkpoint_id",
             "seq": "checkpoint_seq_no", "chash": "checkpoint_hash",
             "prev": "previous_checkpoint_hash"}


@pytest.fixture(scope="module")
def vault(tmp_path_factory):
    v = Vault(tmp_path_factory.mktemp("input"))
    v.run(cli_args(T, S, "chk_0", 0, h("a", 0)), check=0)
    return v


@pytest.fixture(scope="module")
def server(vault):
    s = Server(vault)
    yield s
    assert s.stop() == 0


def one_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    assert len(lines) == 1, text
    return lines[0]


def cli_field(name):
    """The CLI names its flags; messages from the shared checks use them too."""
    return {v: CLI_FLAG[k] for k, v in JSON_NAME.items()}[name]


@pytest.mark.parametrize("case,over,field,rule", BAD, ids=[b[0] for b in BAD])
def test_cli_bad_value_exit_2_names_the_field(vault, case, over, field, rule):
    before = snapshot(vault)
    a = dict(GOOD, **over)
    p = vault.run(cli_args(a["tenant"], a["stream"], a["cid"], a["seq"], a["chash"], a["prev"]),
                  check=2)
    line = one_line(p.stderr)
    assert line.startswith("witness-checkpoint: " + cli_field(field) + ":"), line
    assert rule in line, line
    assert p.stdout == ""
    assert snapshot(vault) == before


@pytest.mark.parametrize("case,over,field,rule", BAD, ids=[b[0] for b in BAD])
def test_endpoint_bad_value_400_names_the_field(vault, server, case, over, field, rule):
    before = snapshot(vault)
    a = dict(GOOD, **over)
    status, _, body = server.post(request_body(a["tenant"], a["stream"], a["cid"], a["seq"],
                                               a["chash"], a["prev"]))
    assert status == 400, body
    err = json.loads(body)
    assert err["error"] == "invalid_request"
    # Numbers beyond 2^53-1 are refused by the strict JSON reader, naming the path.
    assert err["message"].startswith(field) or err["message"].startswith("request." + field), err
    if not case.startswith("seq-huge") and not case.startswith("seq-too-large"):
        assert rule in err["message"], err
    assert snapshot(vault) == before


@pytest.mark.parametrize("missing", MISSING)
def test_missing_field_cli_and_endpoint(vault, server, missing):
    before = snapshot(vault)
    a = dict(GOOD)
    args = cli_args(a["tenant"], a["stream"], a["cid"], a["seq"], a["chash"], a["prev"])
    i = args.index(CLI_FLAG[missing])
    del args[i:i + 2]
    p = vault.run(args, check=2)
    assert one_line(p.stderr) == f"witness-checkpoint: {CLI_FLAG[missing]}: required"
    body = request_body(a["tenant"], a["stream"], a["cid"], a["seq"], a["chash"], a["prev"])
    del body[JSON_NAME[missing]]
    status, _, resp = server.post(body)
    assert status == 400
    assert json.loads(resp)["message"] == f"{JSON_NAME[missing]}: missing"
    assert snapshot(vault) == before


@pytest.mark.parametrize("value", ["-1", "-0", "+1", "1e3", "0x10", "01", "1.0", " 1", "",
                                   "9007199254740992", "99999999999999999999999"])
def test_cli_seq_must_be_plain_decimal(vault, value):
    before = snapshot(vault)
    a = dict(GOOD)
    p = vault.run(cli_args(a["tenant"], a["stream"], a["cid"], value, a["chash"], a["prev"]),
                  check=2)
    assert "--checkpoint-seq-no:" in one_line(p.stderr)
    assert snapshot(vault) == before


def test_cli_unknown_argument(vault):
    p = vault.run(["witness-checkpoint", "--tenant", T], check=2)
    assert "--tenant: unknown option" in p.stderr


@pytest.mark.parametrize("raw,fragment", [
    (b"not json", "request"),
    (b"[1,2]", "must be a JSON object"),
    (b'{"tenant_id":"a","tenant_id":"b"}', "duplicate"),
    (json.dumps(dict(request_body(T, S, "c", 1, h(1), h(0)), extra=1)).encode(),
     "extra: unknown member"),
    (json.dumps(dict(request_body(T, S, "c", 1, h(1), h(0)), checkpoint_seq_no="1")).encode(),
     "checkpoint_seq_no: must be a JSON integer"),
    (json.dumps(dict(request_body(T, S, "c", 1, h(1), h(0)), checkpoint_seq_no=1.5)).encode(),
     "checkpoint_seq_no"),
    (json.dumps(dict(request_body(T, S, "c", 1, h(1), h(0)), tenant_id=7)).encode(),
     "tenant_id: must be a string"),
    (json.dumps(dict(request_body(T, S, "c", 1, h(1), h(0)), previous_checkpoint_hash=1)).encode(),
     "previous_checkpoint_hash: must be a string or null"),
    (b"", "request"),
])
def test_endpoint_malformed_bodies_are_400(vault, server, raw, fragment):
    before = snapshot(vault)
    status, _, body = server.post(raw=raw)
    assert status == 400, body
    assert fragment in json.loads(body)["message"]
    assert snapshot(vault) == before


def test_endpoint_oversize_body_is_413(vault, server):
    before = snapshot(vault)
    big = json.dumps(dict(request_body(T, S, "c", 1, h(1), h(0)), pad="x" * 20000)).encode()
    status, _, body = server.post(raw=big)
    assert status == 413 and json.loads(body)["error"] == "too_large"
    assert snapshot(vault) == before


def test_endpoint_oversize_chunked_body_is_413(vault, server):
    import http.client
    before = snapshot(vault)
    c = server.connection(timeout=30)
    c.putrequest("POST", "/v1/witness/checkpoints")
    c.putheader("Content-Type", "application/json")
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    chunk = b" " * 8192
    for _ in range(3):
        c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    c.send(b"0\r\n\r\n")
    r = c.getresponse()
    assert r.status == 413, r.read()
    c.close()
    assert snapshot(vault) == before


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "application/jsonx", "multipart/form-data; boundary=x"])
def test_endpoint_wrong_content_type_is_415(vault, server, ctype):
    before = snapshot(vault)
    status, _, body = server.post(request_body(**{
        "tenant": T, "stream": S, "cid": "c", "seq": 1, "chash": h(1), "prev": h("a", 0)}),
        content_type=ctype)
    assert status == 415, body
    assert "Content-Type" in json.loads(body)["message"]
    assert snapshot(vault) == before


def test_endpoint_content_type_with_charset_is_accepted(vault, server):
    status, _, body = server.post(request_body(T, "str_ct", "c", 0, h("ct", 0)),
                                  content_type="application/json; charset=utf-8")
    assert status == 200, body


def test_endpoint_wrong_method_and_path(server):
    status, headers, _ = server.request("GET", "/v1/witness/checkpoints")
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _ = server.request("POST", "/metrics", b"{}",
                                        {"Content-Type": "application/json"})
    assert status == 405
    status, _, _ = server.request("GET", "/v1/witness/nope")
    assert status == 404
