# SPDX-License-Identifier: Apache-2.0
"""The capability probe and the PKCS#11 profiles through the binary: bad
values are one-line usage errors, a spool records its wrap algorithm by name,
a token whose 0x210A is not RFC 5649 is refused before anything is written,
and under the fault shim dressed as a legacy Thales Luna (vendor EdDSA ids,
its manufacturerID) the product signs with the vendor ids. The shim is an
emulation from public documentation; no Luna was used."""
import json
import os
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lvtest import Vault, run

SHIM = os.environ["LV_SHIM"]
DOMAIN = b"attesto.local-vault.relay-envelope.v1\n"
LUNA = ("map-mechanism 0x80000c03 0x1057\n"
        "map-key-type 0x80000012 0x40\n"
        "manufacturer Safenet, Inc.\n")


@pytest.fixture(scope="module")
def v(tmp_path_factory):
    return Vault(tmp_path_factory.mktemp("profile"))


def via_shim(v, tmp_path, rules, **extra):
    """v's environment with the module behind the shim and its rules."""
    path = tmp_path / "shim.rules"
    path.write_text(rules)
    env = dict(v.env)
    env["LV_SHIM_MODULE"] = v.env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"]
    env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"] = SHIM
    env["LV_SHIM_RULES"] = str(path)
    env["LV_SHIM_LOG"] = str(tmp_path / "shim.log")
    env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = str(tmp_path / "spool.sqlite3")
    env.update(extra)
    return env


def enqueue(env, tmp_path, ref, check=0):
    payload = tmp_path / f"{ref}.json"
    payload.write_text(json.dumps({"n": 1}))
    return run(["enqueue", "--stream-id", "s1", "--source-ref", ref, "--payload-file",
                str(payload)], env=env, check=check)


def canon(obj):
    # The envelope holds only ASCII strings and small integers: for such
    # values RFC 8785 is sorted keys without whitespace.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def one_line(s):
    lines = s.strip().splitlines()
    assert len(lines) == 1, s
    return lines[0]


@pytest.mark.parametrize("var,value,rule", [
    ("PROFILE", "luna", "must be one of auto (the default), standard, luna-legacy"),
    ("PROFILE", "LUNA-LEGACY", "must be one of auto (the default), standard, luna-legacy"),
    ("EDDSA_MECHANISM", "0xc03g", "must be a PKCS#11 id in hexadecimal, 1 to 8 digits with an "
     "optional 0x (e.g. 0x80000c03)"),
    ("EDDSA_MECHANISM", "123456789", "must be a PKCS#11 id in hexadecimal, 1 to 8 digits with an "
     "optional 0x (e.g. 0x80000c03)"),
    ("EDDSA_KEY_TYPE", "0x", "must be a PKCS#11 id in hexadecimal, 1 to 8 digits with an "
     "optional 0x (e.g. 0x80000c03)"),
])
def test_a_bad_value_is_a_usage_error_and_nothing_is_written(v, tmp_path, var, value, rule):
    name = "ATTESTO_LOCAL_VAULT_PKCS11_" + var
    env = dict(v.env, **{name: value})
    env["ATTESTO_LOCAL_VAULT_SPOOL_DB"] = str(tmp_path / "spool.sqlite3")
    p = run(["public-key"], env=env, check=2)
    assert one_line(p.stderr) == f"public-key: {name}={value}: {rule}"
    p = enqueue(env, tmp_path, "bad-value", check=2)
    assert one_line(p.stderr) == f"enqueue: {name}={value}: {rule}"
    assert not (tmp_path / "spool.sqlite3").exists()


def test_the_spool_records_the_wrap_algorithm_by_name(v, tmp_path):
    env = dict(v.env, ATTESTO_LOCAL_VAULT_SPOOL_DB=str(tmp_path / "spool.sqlite3"))
    enqueue(env, tmp_path, "wrap-alg")
    with sqlite3.connect(tmp_path / "spool.sqlite3") as c:
        rows = c.execute("SELECT wrap_alg, wrap_mechanism, length(wrapped) FROM deks").fetchall()
    assert rows == [("rfc5649", 0x210A, 40)]


def test_a_0x210a_that_is_not_rfc5649_is_refused_before_anything_is_written(v, tmp_path):
    # The token answers the known-answer test's wrap with other bytes.
    env = via_shim(v, tmp_path, "C_WrapKey CKR_OK effect=corrupt-output times=1\n")
    p = enqueue(env, tmp_path, "kat", check=5)
    assert one_line(p.stderr).startswith(
        "enqueue: encryption key (KEK): CKM_AES_KEY_WRAP_PAD (0x210a) refused: it is not RFC 5649"
        " on token 'attesto': known-answer test: a 32-byte key wrapped to 40 bytes starting ")
    assert not (tmp_path / "spool.sqlite3").exists()


def test_under_a_legacy_luna_the_product_signs_with_the_vendor_ids(v, tmp_path):
    pk = bytes.fromhex(run(["public-key", "--format", "hex"], env=v.env, check=0).stdout.strip())
    env = via_shim(v, tmp_path, LUNA)
    enqueue(env, tmp_path, "luna-1")
    with sqlite3.connect(tmp_path / "spool.sqlite3") as c:
        (body, sealed), = c.execute("SELECT envelope, envelope_sealed FROM items").fetchall()
    assert sealed == 0
    envelope = json.loads(body)
    sig = envelope.pop("local_signature")
    Ed25519PublicKey.from_public_bytes(pk).verify(bytes.fromhex(sig["signature"]),
                                                  DOMAIN + canon(envelope))
    log = (tmp_path / "shim.log").read_text()
    assert "MAP C_SignInit 0x80000c03->0x1057" in log
    checks = {c["name"]: c for c in json.loads(
        run(["doctor", "--json"], env=env).stdout)["checks"]}
    m = checks["mechanisms"]
    assert m["status"] == "pass", m
    assert "manufacturer 'Safenet, Inc.', profile luna-legacy" in m["detail"]
    assert "sign: ed25519 via CKM_VENDOR_DEFINED+0xc03 (0x80000c03)" in m["detail"]
    assert "wrap: rfc5649 via CKM_AES_KEY_WRAP_PAD (0x210a)" in m["detail"]
    assert checks["signing_key"]["status"] == "pass"


def test_a_profile_the_token_lacks_fails_with_a_clear_error(v, tmp_path):
    env = dict(v.env, ATTESTO_LOCAL_VAULT_PKCS11_PROFILE="luna-legacy")
    p = run(["public-key"], env=env, check=5)
    assert one_line(p.stderr) == (
        "public-key: signing key: cannot sign on this token: profile luna-legacy (forced by "
        "ATTESTO_LOCAL_VAULT_PKCS11_PROFILE): token 'attesto' (manufacturer 'SoftHSM project') "
        "does not offer CKM_VENDOR_DEFINED+0xc03 (0x80000c03) with CKF_SIGN")
    checks = {c["name"]: c for c in json.loads(
        run(["doctor", "--json"], env=env).stdout)["checks"]}
    assert checks["mechanisms"]["status"] == "fail"
    assert checks["mechanisms"]["reason"] == "mechanism_missing"


def test_doctor_shows_the_probe_on_softhsm(v):
    checks = {c["name"]: c for c in json.loads(
        run(["doctor", "--json"], env=v.env).stdout)["checks"]}
    d = checks["mechanisms"]["detail"]
    assert checks["mechanisms"]["status"] == "pass"
    assert d.startswith("manufacturer 'SoftHSM project', profile standard, probe ")
    assert d.endswith("; sign: ed25519 via CKM_EDDSA (0x1057); wrap: rfc5649 via "
                      "CKM_AES_KEY_WRAP_PAD (0x210a); seal: aes-256-gcm via CKM_AES_GCM (0x1087)")


def test_a_dek_under_another_algorithm_is_refused_by_name(v, tmp_path):
    db = tmp_path / "spool.sqlite3"
    env = dict(v.env, ATTESTO_LOCAL_VAULT_SPOOL_DB=str(db))
    enqueue(env, tmp_path, "alg-1")
    with sqlite3.connect(db) as c:
        c.execute("UPDATE deks SET wrap_alg = 'rfc3394'")
    p = enqueue(env, tmp_path, "alg-2", check=1)
    assert one_line(p.stderr).endswith(
        "data key 1 is wrapped with 'rfc3394', which this version cannot unwrap (it knows rfc5649)")
    checks = {c["name"]: c for c in json.loads(
        run(["doctor", "--json"], env=env).stdout)["checks"]}
    assert checks["spool_db"]["status"] == "fail"
    assert "DEK 1 is wrapped with 'rfc3394'" in checks["spool_db"]["detail"]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 1


def test_a_spool_from_0x210a_opens_on_a_token_with_kwp_under_0x210b_only(v, tmp_path):
    """A spool made on SoftHSM (0x210A), opened through the shim dressed as a
    PKCS#11 3.0 token that offers RFC 5649 only as CKM_AES_KEY_WRAP_KWP: its
    DEKs are unwrapped by algorithm, a DEK made there records 0x210B, and
    plain SoftHSM reads that one back."""
    db = tmp_path / "spool.sqlite3"
    plain = dict(v.env, ATTESTO_LOCAL_VAULT_SPOOL_DB=str(db))
    enqueue(plain, tmp_path, "kwp-1")
    kwp = via_shim(v, tmp_path, "map-mechanism 0x210b 0x210a\n")
    checks = {c["name"]: c for c in json.loads(
        run(["doctor", "--json"], env=kwp).stdout)["checks"]}
    assert "wrap: rfc5649 via CKM_AES_KEY_WRAP_KWP (0x210b)" in checks["mechanisms"]["detail"]
    assert checks["dek"]["status"] == "pass", checks["dek"]
    assert "(rfc5649 via CKM_AES_KEY_WRAP_KWP)" in checks["dek"]["detail"]
    enqueue(kwp, tmp_path, "kwp-2")
    run(["spool", "rotate-dek", "--json"], env=kwp, check=0)
    enqueue(kwp, tmp_path, "kwp-3")
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT id, wrap_alg, wrap_mechanism FROM deks ORDER BY id").fetchall()
    assert rows == [(1, "rfc5649", 0x210A), (2, "rfc5649", 0x210B)]
    log = (tmp_path / "shim.log").read_text()
    assert "MAP C_UnwrapKey 0x210b->0x210a" in log and "MAP C_WrapKey 0x210b->0x210a" in log
    for env in (kwp, plain):
        for ref in ("kwp-1", "kwp-2", "kwp-3"):
            p = run(["show", f"local-vault:inst-test:{ref}", "--payload", "--json"], env=env,
                    check=0)
            assert json.loads(p.stdout)["payload"] == {"n": 1}
