# SPDX-License-Identifier: Apache-2.0
"""The token layer through the binary, on fresh SoftHSM tokens: RFC 8032
vectors, independent verification, key attributes seen by other PKCS#11
tools, PIN handling, and each refusal with its exit code and message."""
import json
import os
import re
import subprocess

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lvtest import LV_BIN, VECTORS, Vault, run

SIGN = os.environ.get("LV_TEST_SIGN")
SHIM = os.environ.get("LV_PIN_SHIM")
CKF_USER_PIN_FINAL_TRY = 0x20000
CKF_USER_PIN_LOCKED = 0x40000


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One provisioned token for the tests that only read it or are refused
    before touching it; tests that change the token make their own."""
    return Vault(tmp_path_factory.mktemp("shared"))


def pin(v):
    with open(os.path.join(v.env["LV_TOKEN_DIR"], "pin")) as f:
        return f.read().strip()


def module(v):
    return v.env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"]


def tool(v, args, check=True):
    """Runs an independent tool (pkcs11-tool, p11tool, softhsm2-util) on v's token."""
    p = subprocess.run(args, env=v.env, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, f"{args}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def pkcs11_tool(v, *args, check=True):
    return tool(v, ["pkcs11-tool", "--module", module(v), "--login", "--pin", pin(v)] + list(args),
                check=check)


def sign(v, msg, tmp_path, env=None):
    path = os.path.join(str(tmp_path), "msg.bin")
    with open(path, "wb") as f:
        f.write(msg)
    p = subprocess.run([SIGN, path], env=env or v.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return bytes.fromhex(p.stdout.strip())


def import_ed25519(v, seed, tmp_path, label="lv-signing", key_id="01"):
    """Test-only import of a known Ed25519 key: PKCS#8 from python3-cryptography,
    loaded with softhsm2-util --import (makes the private and public object)."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pem = os.path.join(str(tmp_path), f"import-{key_id}.pem")
    with open(pem, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    tool(v, ["softhsm2-util", "--import", pem, "--token", "attesto", "--label", label,
             "--id", key_id, "--pin", pin(v)])
    os.unlink(pem)


def token_flags(v):
    out = tool(v, ["pkcs11-tool", "--module", module(v), "-L"]).stdout
    m = re.search(r"token label\s*: attesto\n(?:.*\n)*?\s*token flags\s*: (.*)", out)
    assert m, out
    return m.group(1)


# ---- RFC 8032 and independent verification ----------------------------------

def rfc8032_vectors():
    with open(os.path.join(VECTORS, "rfc8032", "rfc8032-7.1-ed25519.json")) as f:
        vs = json.load(f)["vectors"]
    return [x for x in vs if x["name"] in ("TEST 1", "TEST 2", "TEST 3")]


@pytest.mark.parametrize("vec", rfc8032_vectors(), ids=lambda x: x["name"].replace(" ", ""))
def test_rfc8032_signature_and_public_key_byte_for_byte(tmp_path, vec):
    v = Vault(tmp_path, keys=False)
    import_ed25519(v, bytes.fromhex(vec["secret_key"]), tmp_path)
    p = v.run(["public-key", "--format", "hex"], check=0)
    assert p.stdout == vec["public_key"] + "\n"
    assert sign(v, bytes.fromhex(vec["message"]), tmp_path).hex() == vec["signature"]


def test_rfc8032_vector_file_is_the_rfc():
    # Guard against a silently edited vector file: TEST 1 as printed in RFC 8032.
    t1 = rfc8032_vectors()[0]
    assert t1["public_key"].startswith("d75a980182b10ab7d54bfed3c964073a")
    assert t1["message"] == ""
    assert t1["signature"].startswith("e5564300c360ac729086e2cc806e828a")


def test_project_signature_verifies_with_openssl_and_cryptography(shared, tmp_path):
    v = shared
    msg = b"attesto.local-vault.relay-envelope.v1\n{\"event_id\":\"local-vault:inst:1\"}"
    sig = sign(v, msg, tmp_path)
    pem = v.run(["public-key", "--format", "pem"], check=0).stdout
    d = str(tmp_path)
    for name, data in (("pk.pem", pem.encode()), ("msg", msg), ("sig", sig),
                       ("bad", msg + b" ")):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    ok = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", f"{d}/pk.pem",
                         "-rawin", "-in", f"{d}/msg", "-sigfile", f"{d}/sig"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout, ok.stderr
    bad = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", f"{d}/pk.pem",
                          "-rawin", "-in", f"{d}/bad", "-sigfile", f"{d}/sig"],
                         capture_output=True, text=True)
    assert bad.returncode != 0

    pk = serialization.load_pem_public_key(pem.encode())
    assert isinstance(pk, Ed25519PublicKey)
    pk.verify(sig, msg)
    with pytest.raises(InvalidSignature):
        pk.verify(sig, msg + b" ")
    hexpk = v.run(["public-key", "--format", "hex"], check=0).stdout.strip()
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(hexpk)).verify(sig, msg)


# ---- keys init ------------------------------------------------------------

def test_keys_init_creates_then_is_idempotent(tmp_path):
    v = Vault(tmp_path, keys=False)
    first = json.loads(v.run(["keys", "init"], check=0).stdout)
    assert first["signing_key"]["created"] is True
    assert first["encryption_key"]["created"] is True
    second = json.loads(v.run(["keys", "init"], check=0).stdout)
    assert second["signing_key"]["created"] is False
    assert second["encryption_key"]["created"] is False
    assert second["signing_key"]["public_key_hex"] == first["signing_key"]["public_key_hex"]
    # Exactly one private key, one public key and one secret key: nothing doubled.
    objs = pkcs11_tool(v, "-O").stdout
    assert objs.count("Private Key Object") == 1
    assert objs.count("Public Key Object") == 1
    assert objs.count("Secret Key Object") == 1
    j = json.loads(v.run(["public-key"], check=0).stdout)
    assert j["public_key_hex"] == first["signing_key"]["public_key_hex"]
    assert j["kid"] == first["signing_key"]["kid"] and j["kid"].startswith("lv-")


def test_keys_init_keys_are_sensitive_and_never_extractable_to_pkcs11_tool(shared, tmp_path):
    v = shared
    out = pkcs11_tool(v, "-O").stdout
    blocks = re.split(r"\n(?=\S)", out)
    priv = [b for b in blocks if b.startswith("Private Key Object; EC_EDWARDS")]
    kek = [b for b in blocks if b.startswith("Secret Key Object; AES length 32")]
    assert len(priv) == 1 and len(kek) == 1, out
    for b in priv + kek:
        access = re.search(r"Access:\s*(.*)", b).group(1)
        assert "sensitive" in access and "never extractable" in access, b
        assert "always sensitive" in access, b
    assert re.search(r"Usage:\s*sign\s*$", priv[0], re.M), priv[0]
    assert re.search(r"Usage:\s*encrypt, decrypt, wrap, unwrap", kek[0]), kek[0]


def test_keys_init_keys_are_sensitive_and_never_extractable_to_p11tool(shared, tmp_path):
    v = shared
    env = dict(v.env, GNUTLS_PIN=pin(v))
    p = subprocess.run(["p11tool", "--provider", module(v), "--login", "--list-all",
                        "pkcs11:token=attesto"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    objs = p.stdout.split("Object ")
    priv = [o for o in objs if "type=private" in o and "object=lv-signing" in o]
    kek = [o for o in objs if "type=secret-key" in o and "object=lv-spool-kek" in o]
    assert len(priv) == 1 and len(kek) == 1, p.stdout
    for o in priv + kek:
        flags = re.search(r"Flags: (.*)", o).group(1)
        assert "CKA_SENSITIVE" in flags and "CKA_NEVER_EXTRACTABLE" in flags, o
        assert "CKA_EXTRACTABLE" not in flags.replace("CKA_NEVER_EXTRACTABLE", ""), o
    assert "EdDSA (Ed25519)" in priv[0]
    assert "CKA_WRAP/UNWRAP" in kek[0]


def test_keys_init_refuses_existing_key_with_wrong_attributes(tmp_path):
    v = Vault(tmp_path, keys=False)
    # A KEK an operator made without --sensitive: its value is readable.
    pkcs11_tool(v, "--keygen", "--key-type", "AES:32", "--label", "lv-spool-kek", "--id", "07",
                "--private", "--usage-wrap")
    before = pkcs11_tool(v, "-O").stdout
    assert "Private Key Object" not in before
    p = v.run(["keys", "init"], check=5)
    assert "encryption key (KEK): CKA_SENSITIVE is FALSE" in p.stderr
    after = pkcs11_tool(v, "-O").stdout
    assert after == before  # the refusal came first: no signing key was created either


def test_keys_init_refuses_orphan_public_key(tmp_path):
    v = Vault(tmp_path)
    pkcs11_tool(v, "--delete-object", "--type", "privkey", "--label", "lv-signing")
    p = v.run(["keys", "init"], check=5)
    assert "holds a public key object named by" in p.stderr


def test_keys_init_refuses_aes128_kek(tmp_path):
    v = Vault(tmp_path, keys=False)
    pkcs11_tool(v, "--keygen", "--key-type", "AES:16", "--label", "lv-spool-kek", "--id", "09",
                "--sensitive", "--private", "--usage-wrap")
    p = v.run(["keys", "init"], check=5)
    assert "CKA_VALUE_LEN is 16; expected 32 (AES-256)" in p.stderr


# ---- PIN ----------------------------------------------------------------------

def shim_env(v, tmp_path, flags=0):
    log = os.path.join(str(tmp_path), "logins")
    env = dict(v.env, ATTESTO_LOCAL_VAULT_PKCS11_MODULE=SHIM, LV_SHIM_REAL=module(v),
               LV_SHIM_FLAGS=str(flags), LV_SHIM_LOGIN_LOG=log)
    return env, log


def logins(log):
    if not os.path.exists(log):
        return 0
    with open(log) as f:
        return len(f.read().splitlines())


def test_wrong_pin_fails_once_and_does_not_lock(tmp_path):
    v = Vault(tmp_path)
    wrong = os.path.join(str(tmp_path), "wrong-pin")
    with open(wrong, "w") as f:
        f.write("00000000\n")
    env, log = shim_env(v, tmp_path)
    env["ATTESTO_LOCAL_VAULT_PIN_FILE"] = wrong
    p = run(["public-key"], env=env, check=5)
    assert "rejected the PIN from " + wrong in p.stderr
    assert "CKR_PIN_INCORRECT" in p.stderr and "not retried" in p.stderr
    assert p.stderr.count("\n") == 1  # reported once
    assert "00000000" not in p.stderr
    assert logins(log) == 1  # one C_Login, no retry
    flags = token_flags(v)
    assert "locked" not in flags and "final try" not in flags, flags
    assert "PIN initialized" in flags
    # The right PIN still works: the token was not locked.
    v.run(["public-key", "--format", "hex"], check=0)


def test_pin_final_try_is_refused_before_any_login(shared, tmp_path):
    v = shared
    env, log = shim_env(v, tmp_path, CKF_USER_PIN_FINAL_TRY)
    p = run(["public-key"], env=env, check=5)
    assert "CKF_USER_PIN_FINAL_TRY" in p.stderr and "refusing" in p.stderr
    assert logins(log) == 0


def test_locked_pin_is_refused_before_any_login(shared, tmp_path):
    v = shared
    env, log = shim_env(v, tmp_path, CKF_USER_PIN_LOCKED)
    p = run(["public-key"], env=env, check=5)
    assert "user PIN is locked (CKF_USER_PIN_LOCKED)" in p.stderr
    assert logins(log) == 0


def test_shim_passes_through_when_no_flags(shared, tmp_path):
    # The shim itself changes nothing else: same key, one login.
    v = shared
    env, log = shim_env(v, tmp_path)
    a = run(["public-key", "--format", "hex"], env=env, check=0).stdout
    assert a == v.run(["public-key", "--format", "hex"], check=0).stdout
    assert logins(log) == 1


def test_credential_directory_comes_before_pin_file(shared, tmp_path):
    v = shared
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pkcs11-pin").write_text(pin(v) + "\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("99999999")
    env = dict(v.env, CREDENTIALS_DIRECTORY=str(creds), ATTESTO_LOCAL_VAULT_PIN_FILE=str(wrong))
    run(["public-key"], env=env, check=0)
    # And without the credential the (wrong) PIN file is what is used.
    (creds / "pkcs11-pin").unlink()
    p = run(["public-key"], env=env, check=5)
    assert "rejected the PIN from " + str(wrong) in p.stderr


def test_pin_source_in_uri_is_the_last_resort(shared, tmp_path):
    v = shared
    env = dict(v.env)
    del env["ATTESTO_LOCAL_VAULT_PIN_FILE"]
    pinfile = os.path.join(v.env["LV_TOKEN_DIR"], "pin")
    env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"] += f"?pin-source=file:{pinfile}"
    run(["public-key"], env=env, check=0)
    env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"] = v.env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"]
    p = run(["public-key"], env=env, check=5)
    assert "no PIN source" in p.stderr


def test_missing_pin_file_and_empty_pin_file(shared, tmp_path):
    v = shared
    p = run(["--pin-file", str(tmp_path / "nope"), "public-key"], env=v.env, check=5)
    assert "PIN file " + str(tmp_path / "nope") + ": does not exist" in p.stderr
    (tmp_path / "empty").write_text("\n")
    p = run(["--pin-file", str(tmp_path / "empty"), "public-key"], env=v.env, check=5)
    assert ": empty" in p.stderr


def test_pin_value_in_uri_is_refused(shared, tmp_path):
    v = shared
    uri = v.env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"] + "?pin-value=" + pin(v)
    p = run(["--signing-key", uri, "public-key"], env=v.env, check=2)
    assert "pin-value= is refused" in p.stderr
    assert pin(v) not in p.stderr


# ---- module and token selection ----------------------------------------------

def keep_module_resident(env, v):
    """p11-kit dlcloses registered modules when they are released, before
    LeakSanitizer symbolizes its report; SoftHSM's known per-signature leak
    (tests/sanitizers/lsan.supp) then shows as '<unknown module>' and escapes
    its suppression. In an ASan build, preload SoftHSM (after the ASan
    runtime, which must come first) so it stays mapped; leak checking of our
    own code stays on."""
    ldd = subprocess.run(["ldd", LV_BIN], capture_output=True,
                         text=True).stdout
    m = re.search(r"(\S*libasan\.so\S*) => (\S+)", ldd)
    if m:
        env["LD_PRELOAD"] = f"{m.group(2)} {module(v)}"


def test_registered_p11kit_module_is_used_without_a_path(shared, tmp_path):
    v = shared
    env = dict(v.env)
    del env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"]
    keep_module_resident(env, v)
    a = run(["public-key", "--format", "hex"], env=env, check=0).stdout
    assert a == v.run(["public-key", "--format", "hex"], check=0).stdout


def test_module_path_from_uri(shared, tmp_path):
    v = shared
    env = dict(v.env)
    del env["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"]
    env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"] += "?module-path=" + module(v)
    run(["public-key"], env=env, check=0)
    env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"] = (v.env["ATTESTO_LOCAL_VAULT_SIGNING_KEY"]
                                              + "?module-path=/nonexistent/libp11.so")
    p = run(["public-key"], env=env, check=5)
    assert "PKCS#11 module /nonexistent/libp11.so: No such file or directory" in p.stderr


def test_missing_module(shared, tmp_path):
    v = shared
    p = run(["--pkcs11-module", "/nonexistent/libsofthsm2.so", "public-key"], env=v.env, check=5)
    assert "PKCS#11 module /nonexistent/libsofthsm2.so: No such file or directory" in p.stderr


def test_library_that_is_not_a_pkcs11_module(shared, tmp_path):
    v = shared
    lib = next(p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1",
                           "/lib/aarch64-linux-gnu/libz.so.1") if os.path.exists(p))
    p = run(["--pkcs11-module", lib, "public-key"], env=v.env, check=5)
    assert f"PKCS#11 module {lib} cannot be loaded" in p.stderr


def test_absent_token(shared, tmp_path):
    v = shared
    p = run(["--signing-key", "pkcs11:token=no-such-token;object=lv-signing;type=private",
             "public-key"], env=v.env, check=5)
    assert "no token matches pkcs11:token=no-such-token" in p.stderr
    assert "tokens present: 'attesto'" in p.stderr


def test_two_matching_tokens_are_ambiguous(tmp_path):
    v = Vault(tmp_path)
    tool(v, ["softhsm2-util", "--init-token", "--free", "--label", "attesto", "--so-pin",
             "12345678", "--pin", "12345678"])
    p = v.run(["public-key"], check=5)
    assert "2 tokens match pkcs11:token=attesto" in p.stderr
    assert "serial=" in p.stderr


# ---- key lookup and key checks -------------------------------------------------

def test_missing_key(tmp_path):
    v = Vault(tmp_path, keys=False)
    p = v.run(["public-key"], check=5)
    assert ("signing key: no object on token 'attesto' matches "
            "pkcs11:token=attesto;object=lv-signing;type=private") in p.stderr


def test_keys_init_creates_only_what_is_missing(tmp_path):
    v = Vault(tmp_path, keys=False)
    import_ed25519(v, bytes(range(32)), tmp_path)
    before = v.run(["public-key", "--format", "hex"], check=0).stdout.strip()
    j = json.loads(v.run(["keys", "init"], check=0).stdout)
    assert j["signing_key"]["created"] is False  # the imported key is kept
    assert j["signing_key"]["public_key_hex"] == before
    assert j["encryption_key"]["created"] is True


def test_two_matching_keys_are_ambiguous(tmp_path):
    v = Vault(tmp_path, keys=False)
    for key_id in ("01", "02"):
        pkcs11_tool(v, "--keypairgen", "--key-type", "EC:edwards25519", "--label", "lv-signing",
                    "--id", key_id, "--usage-sign", "--sensitive", "--private")
    p = v.run(["public-key"], check=5)
    assert "2 objects on token 'attesto' match pkcs11:token=attesto;object=lv-signing" in p.stderr
    assert "refusing to guess" in p.stderr
    # Naming one of them by id resolves it.
    run(["--signing-key", "pkcs11:token=attesto;object=lv-signing;id=%01;type=private",
         "public-key"], env=v.env, check=0)


def test_ec_p256_key_where_ed25519_is_expected(tmp_path):
    v = Vault(tmp_path, keys=False)
    pkcs11_tool(v, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "lv-signing",
                "--id", "03", "--usage-sign", "--sensitive", "--private")
    p = v.run(["public-key"], check=5)
    assert "CKA_KEY_TYPE is CKK_EC (0x3); expected CKK_EC_EDWARDS with Ed25519" in p.stderr


def test_rsa_key_where_ed25519_is_expected(tmp_path):
    v = Vault(tmp_path, keys=False)
    pkcs11_tool(v, "--keypairgen", "--key-type", "rsa:1024", "--label", "lv-signing",
                "--id", "04", "--usage-sign", "--sensitive", "--private")
    p = v.run(["keys", "init"], check=5)
    assert "CKA_KEY_TYPE is CKK_RSA (0x0); expected CKK_EC_EDWARDS" in p.stderr


def test_extractable_key_is_refused(tmp_path):
    v = Vault(tmp_path, keys=False)
    pkcs11_tool(v, "--keypairgen", "--key-type", "EC:edwards25519", "--label", "lv-signing",
                "--id", "05", "--usage-sign", "--sensitive", "--private", "--extractable")
    p = v.run(["public-key"], check=5)
    assert "CKA_EXTRACTABLE is TRUE; the key must not be extractable" in p.stderr


def test_extractable_kek_is_refused(tmp_path):
    v = Vault(tmp_path)
    # Replace the KEK by an extractable one with the same label.
    pkcs11_tool(v, "--delete-object", "--type", "secrkey", "--label", "lv-spool-kek")
    pkcs11_tool(v, "--keygen", "--key-type", "AES:32", "--label", "lv-spool-kek", "--id", "0a",
                "--sensitive", "--private", "--extractable", "--usage-wrap")
    p = v.run(["keys", "init"], check=5)
    assert "encryption key (KEK): CKA_EXTRACTABLE is TRUE" in p.stderr


def test_raw_key_material_instead_of_uri(shared, tmp_path):
    v = shared
    raw = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    env = dict(v.env, ATTESTO_LOCAL_VAULT_SIGNING_KEY=raw)
    p = run(["public-key"], env=env, check=2)
    assert "not a PKCS#11 URI" in p.stderr and "pkcs11:token=" in p.stderr
    assert raw not in p.stderr + p.stdout
    env = dict(v.env, ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY="base64:" + "A" * 43 + "=")
    p = run(["keys", "init"], env=env, check=2)
    assert "--encryption-key: not a PKCS#11 URI" in p.stderr
    assert "A" * 43 not in p.stderr


@pytest.mark.parametrize("uri,why", [
    ("pkcs11:token=attesto;object=%zz;type=private", "malformed PKCS#11 URI"),
    ("pkcs11:token=attesto;objekt=lv-signing;type=private", "unrecognized PKCS#11 URI attribute"),
    ("pkcs11:token=attesto;object=lv-signing;type=secret-key", "type= must be private"),
    ("pkcs11:token=attesto;type=private", "names no object"),
])
def test_malformed_signing_uri(shared, tmp_path, uri, why):
    v = shared
    p = run(["--signing-key", uri, "public-key"], env=v.env, check=2)
    assert why in p.stderr


# ---- public-key formats ---------------------------------------------------------

def test_public_key_formats_agree(shared, tmp_path):
    v = shared
    hexpk = v.run(["public-key", "--format", "hex"], check=0).stdout.strip()
    pem = v.run(["public-key", "--format=pem"], check=0).stdout
    j = json.loads(v.run(["public-key", "--format", "json"], check=0).stdout)
    raw = serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == hexpk == j["public_key_hex"]
    assert j["alg"] == "Ed25519" and j["public_key_pem"] == pem
    k = run(["--key-id", "edge-7", "public-key"], env=v.env, check=0)
    assert json.loads(k.stdout)["kid"] == "edge-7"
    p = v.run(["public-key", "--format", "der"], check=2)
    assert "--format der: must be json, pem or hex" in p.stderr
    v.run(["keys"], check=2)
    v.run(["keys", "rotate"], check=2)
