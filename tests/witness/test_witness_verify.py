# SPDX-License-Identifier: Apache-2.0
"""`verify` checks witness receipts and fork evidence offline against a
pinned key, and refuses forgeries, another key and malformed documents."""
import json

import pytest

from witnesslib import Vault, cli_args, h, public_key_hex

T, S = "ten_v", "str_v"


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    vault = Vault(tmp_path_factory.mktemp("verify"))
    r0 = vault.run(cli_args(T, S, "c0", 0, h(0)), check=0).stdout
    r1 = vault.run(cli_args(T, S, "c1", 1, h(1), h(0)), check=0).stdout
    fork = vault.run(cli_args(T, S, "c1x", 1, h("x"), h(0)), check=3).stdout
    files = {}
    for name, text in (("r0", r0), ("r1", r1), ("fork", fork)):
        p = tmp_path_factory.getbasetemp() / f"{name}.json"
        p.write_text(text)
        files[name] = str(p)
    return vault, public_key_hex(vault), files


def test_verify_accepts_receipts_and_evidence_with_the_pinned_key(docs):
    vault, pk, files = docs
    p = vault.run(["verify", files["r1"], "--public-key", pk, "--json"], check=0)
    out = json.loads(p.stdout)
    assert out["valid"] is True and out["kind"] == "witness_receipt"
    assert out["checkpoint_seq_no"] == 1 and out["stream_id"] == S
    assert out["statement_hash"] == json.load(open(files["r1"]))["statement_hash"]
    p = vault.run(["verify", files["fork"], "--public-key", pk, "--json"], check=0)
    out = json.loads(p.stdout)
    assert out["kind"] == "fork_evidence" and out["reason"] == "conflicting_checkpoint"
    p = vault.run(["verify", "-", "--public-key", pk, "--json"], input=open(files["r0"]).read(),
                  check=0)
    assert json.loads(p.stdout)["checkpoint_seq_no"] == 0


def test_verify_refuses_another_key(docs):
    vault, pk, files = docs
    other = ("0" if pk[0] != "0" else "1") + pk[1:]
    p = vault.run(["verify", files["r1"], "--public-key", other])
    assert p.returncode != 0 and "not the expected witness key" in p.stderr


@pytest.mark.parametrize("edit,fragment", [
    (lambda d: d["statement"].update(checkpoint_seq_no=7), "statement_hash"),
    (lambda d: d.update(statement_hash="0" * 64), "statement_hash"),
    (lambda d: d["signature"].update(signature="00" * 64), "signature"),
    (lambda d: d.update(result="fork_evidence"), "result"),
    (lambda d: d["statement"].update(extra="x"), "statement.extra: unknown member"),
])
def test_verify_refuses_tampered_documents(docs, tmp_path, edit, fragment):
    vault, pk, files = docs
    d = json.load(open(files["r1"]))
    edit(d)
    f = tmp_path / "tampered.json"
    f.write_text(json.dumps(d, separators=(",", ":")) + "\n")
    p = vault.run(["verify", str(f), "--public-key", pk])
    assert p.returncode != 0, p.stdout
    assert fragment in p.stderr and p.stdout == ""
