# SPDX-License-Identifier: Apache-2.0
"""Proof bundles (receipts export, verify --bundle) against the reference
receiver over real TLS and a fresh SoftHSM token: a bundle from a real drain
verifies with the product and with an independent python3-cryptography
check written here (docs/protocol.md's signing messages); one flipped byte
anywhere in a line fails that line; a receiver key rotation exports and
verifies in one bundle; keys given on the command line pin the keys; bad
inputs are one line, exit 2, nothing written."""
import hashlib
import json
import os
import stat

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from relaylib import drain_once, enqueue
from test_receipts import pin, printed_key, receipt_key_pem

ENVELOPE_DOMAIN = b"attesto.local-vault.relay-envelope.v1\n"
RECEIPT_DOMAIN = b"attesto.local-vault.receiver-receipt.v1\n"
REFS = [("str_1", "a"), ("str_2", "b"), ("str_1", "c")]


def jcs(obj):
    # The members are identifiers, hex, timestamps and integers: a sorted
    # compact dump is their RFC 8785 form.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def independent_check(line, vault_pk=None, receiver_keys=None):
    """Not the product's code: parses the line and checks both signatures
    and the bindings. Keys given pin them. Raises on any failure."""
    b = json.loads(line)
    assert b["bundle_version"] == 1
    env_bytes = b["envelope"].encode()
    env = json.loads(env_bytes)
    ek = b["envelope_key"]
    assert ek["alg"] == "Ed25519" and ek["kid"] == env["local_signature"]["kid"]
    if vault_pk is not None:
        assert ek["public_key_hex"] == vault_pk
    unsigned = {k: v for k, v in env.items() if k != "local_signature"}
    assert jcs(env) == env_bytes, "the envelope is not in its canonical form"
    ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(ek["public_key_hex"])).verify(
        bytes.fromhex(env["local_signature"]["signature"]), ENVELOPE_DOMAIN + jcs(unsigned))
    rc = json.loads(b["receipt"])
    assert rc["event_hash"] == hashlib.sha256(env_bytes).hexdigest()
    assert rc["event_id"] == env["event_id"] and rc["stream_id"] == env["stream_id"]
    rk = b["receipt_key"]
    assert rk["alg"] == "Ed25519" and rk["kid"] == rc["receipt"]["kid"]
    if receiver_keys is not None:
        assert receiver_keys[rk["kid"]] == rk["public_key_hex"]
    statement = {k: v for k, v in rc.items() if k != "receipt"}
    ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(rk["public_key_hex"])).verify(
        bytes.fromhex(rc["receipt"]["signature"]), RECEIPT_DOMAIN + jcs(statement))
    return env, rc


def export(vault, out, *args, check=0):
    return vault.run(["receipts", "export", "--json", "--out", str(out), *args], check=check)


def verify_bundle(vault, path, *args, check=None):
    p = vault.run(["verify", "--bundle", str(path), "--json", *args], check=check)
    return p, (json.loads(p.stdout) if p.stdout.strip() else None)


def drained(vault, start_receiver, tmp_path, refs=REFS):
    receiver = start_receiver(vault)
    keys_file = pin(vault, tmp_path, [printed_key(receiver)])
    for s, r in refs:
        enqueue(vault, s, r)
    p, s = drain_once(vault)
    assert p.returncode == 0 and s["delivered"] == len(refs), p.stderr
    return receiver, keys_file


def test_a_bundle_from_a_real_drain_verifies_with_the_product_and_independently(
        vault, start_receiver, tmp_path):
    receiver, keys_file = drained(vault, start_receiver, tmp_path)
    out = tmp_path / "bundle.jsonl"
    p = export(vault, out)
    assert json.loads(p.stdout) == {"out": str(out), "lines": 3, "unverifiable": 0}
    assert stat.S_IMODE(os.lstat(out).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == sorted(set(os.listdir(tmp_path)))
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    # Independent: python3-cryptography over the signing messages of
    # docs/protocol.md, with the keys pinned as the test knows them.
    seen = []
    for line in lines:
        env, rc = independent_check(line, vault.pk, {receiver.receipt_kid:
                                                     receiver.receipt_public_key.hex()})
        seen.append((env["stream_id"], env["source_ref"]))
    assert seen == REFS  # enqueue order
    # The envelope is the one the receiver got, byte for byte (the receiver
    # logs them in arrival order: three streams go out in parallel).
    assert sorted(json.loads(l)["envelope"] for l in lines) == \
        sorted(e["body"] for e in receiver.events())
    p, s = verify_bundle(vault, out, check=0)
    assert s == {"lines": 3, "ok": 3, "failed": 0}, p.stderr
    p, s = verify_bundle(vault, out, "--public-key", vault.pk, "--receipt-key", str(keys_file),
                         check=0)
    assert s == {"lines": 3, "ok": 3, "failed": 0}, p.stderr


def flip(line, i):
    """line with byte i changed: a hex digit to another one, anything else
    by its lowest bit (never a newline: the line stays one line)."""
    b = bytearray(line.encode())
    b[i] ^= 0x01
    assert b[i] != 0x0A
    return b.decode("utf-8", errors="surrogateescape")


def test_one_flipped_byte_anywhere_fails_that_line(vault, start_receiver, tmp_path):
    drained(vault, start_receiver, tmp_path, refs=[("str_1", "a")])
    out = tmp_path / "bundle.jsonl"
    export(vault, out)
    line = out.read_text().splitlines()[0]
    raw = line.encode()
    assert raw.isascii()
    # Every byte of the line flipped in turn: the envelope, the receipt, both
    # keys, member names, the version. Line 1 is the original.
    flipped = [flip(line, i) for i in range(len(raw))]
    bad = tmp_path / "flipped.jsonl"
    bad.write_text("\n".join([line] + flipped) + "\n")
    p, s = verify_bundle(vault, bad, check=1)
    assert s == {"lines": 1 + len(raw), "ok": 1, "failed": len(raw)}, p.stderr[-2000:]
    named = [l for l in p.stderr.splitlines() if l.startswith(f"verify: --bundle {bad}: line ")]
    assert len(named) == len(raw) and len(p.stderr.splitlines()) == len(raw)
    assert f"line 1:" not in p.stderr
    # A few positions by name, with the rule each one breaks.
    b = json.loads(line)
    cases = {
        "envelope": line.index('\\"signature\\":\\"') + 20,
        "receipt": line.index('\\"seq_no\\":') + 11,
        "envelope_key": line.index(b["envelope_key"]["public_key_hex"]) + 5,
        "receipt_key": line.index(b["receipt_key"]["public_key_hex"]) + 5,
    }
    for what, i in cases.items():
        one = tmp_path / f"{what}.jsonl"
        one.write_text(flip(line, i) + "\n")
        p, s = verify_bundle(vault, one, check=1)
        assert s == {"lines": 1, "ok": 0, "failed": 1}, (what, p.stderr)
        assert p.stderr.startswith(f"verify: --bundle {one}: line 1: "), p.stderr
        # The independent check refuses it too.
        try:
            independent_check(flip(line, i))
        except (InvalidSignature, AssertionError, ValueError, KeyError):
            pass
        else:
            raise AssertionError(f"{what}: the independent check accepted a flipped byte")


def test_bytes_hidden_after_an_escaped_nul_fail_the_line(vault, start_receiver, tmp_path):
    """A JSON string may hold \\u0000, after which a C string stops: bytes
    there would be outside every check, so such a line is refused."""
    drained(vault, start_receiver, tmp_path, refs=[("str_1", "a")])
    out = tmp_path / "bundle.jsonl"
    export(vault, out)
    line = out.read_text().splitlines()[0]
    lines = []
    for member in ("envelope", "receipt"):
        b = json.loads(line)
        b[member] += "\x00 anything at all"
        lines.append(json.dumps(b, separators=(",", ":")))
    bad = tmp_path / "nul.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    p, s = verify_bundle(vault, bad, check=1)
    assert s == {"lines": 2, "ok": 0, "failed": 2}
    assert p.stderr.count("line: holds an escaped NUL") == 2, p.stderr


def test_receiver_key_rotation_in_one_bundle_all_verify(vault, start_receiver, tmp_path):
    old_pem, old_pk = receipt_key_pem(tmp_path / "old.pem")
    new_pem, new_pk = receipt_key_pem(tmp_path / "new.pem")
    r_old = start_receiver(vault, extra=["--receipt-key", old_pem])
    keys = [printed_key(r_old)]
    pin(vault, tmp_path, keys)
    enqueue(vault, "str_1", "before-1")
    enqueue(vault, "str_2", "before-2")
    p, s = drain_once(vault)
    assert p.returncode == 0 and s["delivered"] == 2, p.stderr
    r_old.stop()
    r_new = start_receiver(vault, extra=["--receipt-key", new_pem])
    keys.append(printed_key(r_new))
    keys_file = pin(vault, tmp_path, keys)
    enqueue(vault, "str_1", "after-1")
    enqueue(vault, "str_2", "after-2")
    p, s = drain_once(vault)
    assert p.returncode == 0 and s["delivered"] == 2, p.stderr

    out = tmp_path / "bundle.jsonl"
    export(vault, out)
    by_kid = {r_old.receipt_kid: old_pk.hex(), r_new.receipt_kid: new_pk.hex()}
    kids = []
    for line in out.read_text().splitlines():
        _, rc = independent_check(line, vault.pk, by_kid)
        kids.append(rc["receipt"]["kid"])
    assert kids == [r_old.receipt_kid] * 2 + [r_new.receipt_kid] * 2
    p, s = verify_bundle(vault, out, "--public-key", vault.pk, "--receipt-key", str(keys_file),
                         check=0)
    assert s == {"lines": 4, "ok": 4, "failed": 0}, p.stderr
    # Pinning only the old key: the new key's lines fail, by line number.
    old_only = tmp_path / "old-only.json"
    old_only.write_text(json.dumps(keys[:1]))
    p, s = verify_bundle(vault, out, "--receipt-key", str(old_only), check=1)
    assert s == {"lines": 4, "ok": 2, "failed": 2}
    assert [l.split(": ")[2] for l in p.stderr.splitlines()] == ["line 3", "line 4"], p.stderr
    assert "names no --receipt-key key" in p.stderr


def test_keys_pinned_on_the_command_line_must_match_the_line(vault, start_receiver, tmp_path):
    drained(vault, start_receiver, tmp_path)
    out = tmp_path / "bundle.jsonl"
    export(vault, out)
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    p, s = verify_bundle(vault, out, "--public-key", other, check=1)
    assert s == {"lines": 3, "ok": 0, "failed": 3}
    assert all("envelope_key: not a pinned --public-key key" in l
               for l in p.stderr.splitlines()), p.stderr
    # A receiver key of the right kid but another value.
    b = json.loads(out.read_text().splitlines()[0])
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"alg": "Ed25519", "kid": b["receipt_key"]["kid"],
                                  "public_key_hex": other}]))
    p, s = verify_bundle(vault, out, "--receipt-key", str(wrong), check=1)
    assert s == {"lines": 3, "ok": 0, "failed": 3}
    assert "receipt_key: differs from the --receipt-key key of its kid" in p.stderr


def test_without_pinned_receipt_keys_lines_are_flagged(vault, start_receiver, tmp_path):
    receiver, keys_file = drained(vault, start_receiver, tmp_path)
    del vault.env["ATTESTO_LOCAL_VAULT_RECEIPT_KEYS_FILE"]
    out = tmp_path / "bundle.jsonl"
    p = export(vault, out)
    assert json.loads(p.stdout)["unverifiable"] == 3
    for line in out.read_text().splitlines():
        b = json.loads(line)
        assert b["receipt_key"] is None and b["unverifiable"] == "receipt_key_not_pinned"
    p, s = verify_bundle(vault, out, check=1)
    assert s == {"lines": 3, "ok": 0, "failed": 3}
    assert "receipt_key: null (give the receiver's keys with --receipt-key)" in p.stderr
    # The auditor supplies the receiver's keys: verified.
    p, s = verify_bundle(vault, out, "--receipt-key", str(keys_file), check=0)
    assert s == {"lines": 3, "ok": 3, "failed": 0}, p.stderr


def test_export_filters_by_stream_and_time(vault, start_receiver, tmp_path):
    drained(vault, start_receiver, tmp_path)
    out = tmp_path / "s1.jsonl"
    export(vault, out, "--stream-id", "str_1")
    assert [json.loads(json.loads(l)["envelope"])["source_ref"]
            for l in out.read_text().splitlines()] == ["a", "c"]
    out = tmp_path / "future.jsonl"
    p = export(vault, out, "--since", "2999-01-01")
    assert json.loads(p.stdout)["lines"] == 0 and out.read_text() == ""
    out = tmp_path / "past.jsonl"
    p = export(vault, out, "--since", "2000-01-01T00:00:00Z")
    assert json.loads(p.stdout)["lines"] == 3


def one_line_exit_2(p, needle):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert len(p.stderr.splitlines()) == 1 and needle in p.stderr, p.stderr
    assert p.stdout == ""


def test_bad_export_inputs_write_nothing(vault, start_receiver, tmp_path):
    drained(vault, start_receiver, tmp_path)
    out = tmp_path / "b.jsonl"
    before = sorted(os.listdir(tmp_path))
    one_line_exit_2(export(vault, out, "--since", "yesterday", check=None),
                    "receipts export: --since: yesterday: must be YYYY-MM-DD or "
                    "YYYY-MM-DDTHH:MM:SSZ")
    one_line_exit_2(export(vault, out, "--stream-id", "nope", check=None),
                    "receipts export: --stream-id: nope: no item of this stream in the spool")
    one_line_exit_2(export(vault, out, "--stream-id", "bad id!", check=None),
                    "receipts export: --stream-id: must be 1-128 bytes")
    one_line_exit_2(export(vault, tmp_path / "no-such-dir" / "b.jsonl", check=None),
                    "receipts export: --out: ")
    one_line_exit_2(vault.run(["receipts", "export"]), "receipts export: --out: required")
    assert sorted(os.listdir(tmp_path)) == before
    # Never overwrites, never follows a link.
    out.write_text("keep")
    one_line_exit_2(export(vault, out, check=None),
                    f"receipts export: --out: {out}: exists (receipts export never "
                    "overwrites a file)")
    assert out.read_text() == "keep"
    link = tmp_path / "link.jsonl"
    os.symlink(tmp_path / "target.jsonl", link)
    one_line_exit_2(export(vault, link, check=None), "exists")
    assert not (tmp_path / "target.jsonl").exists()
    # A keys file that does not parse.
    bad_keys = tmp_path / "bad-keys.json"
    bad_keys.write_text("[]")
    vault.env["ATTESTO_LOCAL_VAULT_RECEIPT_KEYS_FILE"] = str(bad_keys)
    one_line_exit_2(export(vault, out.with_name("c.jsonl"), check=None),
                    "receipts export: --receipt-keys-file: ")
    assert not out.with_name("c.jsonl").exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]


def test_bad_verify_bundle_inputs(vault, tmp_path):
    missing = tmp_path / "missing.jsonl"
    one_line_exit_2(vault.run(["verify", "--bundle", str(missing)]),
                    f"verify: --bundle: {missing}: cannot be read")
    f = tmp_path / "b.jsonl"
    f.write_text("")
    one_line_exit_2(vault.run(["verify", "--bundle", str(f), "other.json"]),
                    "verify: other.json: unexpected argument (--bundle names the file)")
    one_line_exit_2(vault.run(["verify", "--receipt-key", str(f), str(f)]),
                    "verify: --receipt-key: only with --bundle")
    one_line_exit_2(vault.run(["verify", "--bundle", str(f), "--receipt-key", str(missing)]),
                    "verify: --receipt-key: ")
    one_line_exit_2(vault.run(["verify"]), "verify: FILE|-: missing")
    # An empty bundle proves nothing.
    p, s = verify_bundle(vault, f, check=1)
    assert s == {"lines": 0, "ok": 0, "failed": 0} and "no lines" in p.stderr
    # Lines that are not bundle lines: each named with its rule.
    f.write_text("\n".join([
        "not json",
        "{}",
        '{"bundle_version":2,"envelope":"{}","envelope_key":null,"receipt":"{}",'
        '"receipt_key":null}',
        '{"bundle_version":1,"envelope":"{}","envelope_key":null,"receipt":"{}",'
        '"receipt_key":null,"extra":1}',
        '{"bundle_version":1,"bundle_version":1}',
        "",
    ]) + "\n")
    p, s = verify_bundle(vault, f, check=1)
    assert s == {"lines": 6, "ok": 0, "failed": 6}
    errs = p.stderr.splitlines()
    assert len(errs) == 6 and all(e.startswith(f"verify: --bundle {f}: line {i + 1}: ")
                                  for i, e in enumerate(errs)), errs
    assert "bundle_version: must be 1" in errs[2]
    assert "extra" in errs[3] and "unknown member" in errs[3]
    assert "empty line" in errs[5]
    # A line over the cap (two envelopes' and acks' worth, escaped) is read
    # to its end without being kept, fails, and the next line is still read.
    cap = 2 * (1024 * 1024 + 16 * 1024 + 64 * 1024) + 4096
    f.write_text("x" * (cap + 1) + "\n{}")
    p, s = verify_bundle(vault, f, check=1)
    assert s == {"lines": 2, "ok": 0, "failed": 2}
    errs = p.stderr.splitlines()
    assert errs[0] == f"verify: --bundle {f}: line 1: over {cap} bytes", errs
    assert errs[1].startswith(f"verify: --bundle {f}: line 2: "), errs
