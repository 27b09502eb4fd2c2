# SPDX-License-Identifier: Apache-2.0
"""Helpers for the relay system tests: a throwaway PKI, the reference
receiver on loopback HTTPS, a vault pointed at it, and the checks that the
receiver's events log and the spool agree."""
import datetime
import hashlib
import ipaddress
import json
import os
import select
import subprocess
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

import lvtest

RECEIVER_BIN = os.environ.get("LV_RECEIVER",
                              os.path.join(lvtest.BUILD_DIR, "attesto-local-vault-receiver"))
ENVELOPE_DOMAIN = b"attesto.local-vault.relay-envelope.v1\n"
RECEIPT_DOMAIN = b"attesto.local-vault.receiver-receipt.v1\n"


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path, key):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def _write_cert(path, cert):
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


class PKI:
    """A CA, a second unrelated CA, a server certificate for 127.0.0.1 and
    localhost, and one for another host name, all made here."""

    def __init__(self, directory):
        self.dir = str(directory)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_key, self.ca_cert = self._ca("attesto-test-ca", now)
        self.ca = os.path.join(self.dir, "ca.pem")
        _write_cert(self.ca, self.ca_cert)
        wrong_key, wrong_cert = self._ca("unrelated-ca", now)
        self.wrong_ca = os.path.join(self.dir, "wrong-ca.pem")
        _write_cert(self.wrong_ca, wrong_cert)
        self.server_cert, self.server_key, self.server_pub = self._leaf(
            "server", now, [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                            x509.DNSName("localhost")])
        self.other_cert, self.other_key, _ = self._leaf(
            "other", now, [x509.DNSName("other.example")])

    def _ca(self, cn, now):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def _leaf(self, name, now, sans):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name("attesto-test-ca"))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        cpath = os.path.join(self.dir, f"{name}.pem")
        kpath = os.path.join(self.dir, f"{name}.key")
        _write_cert(cpath, cert)
        _write_key(kpath, key)
        pub = os.path.join(self.dir, f"{name}.pub.pem")
        with open(pub, "wb") as f:
            f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
        return cpath, kpath, pub

    def pin(self):
        """CURLOPT_PINNEDPUBLICKEY form of the server key: sha256//BASE64."""
        import base64
        with open(self.server_pub, "rb") as f:
            pub = serialization.load_pem_public_key(f.read())
        der = pub.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()


class Receiver:
    """The reference receiver on 127.0.0.1 with an ephemeral port."""

    def __init__(self, directory, pki, register=(), faults=(), cert=None, key=None, seed=1,
                 extra=()):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.events_log = os.path.join(self.dir, "events.jsonl")
        self.fault_file = os.path.join(self.dir, "faults.txt")
        self.stderr_path = os.path.join(self.dir, "receiver.stderr")
        args = [RECEIVER_BIN, "--listen", "127.0.0.1:0",
                "--tls-cert", cert or pki.server_cert, "--tls-key", key or pki.server_key,
                "--events-log", self.events_log, "--fault-file", self.fault_file,
                "--seed", str(seed)]
        for inst, pk in register:
            args += ["--register", f"{inst}={pk}"]
        for f in faults:
            args += ["--fault", f]
        args += list(extra)
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr)
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError("receiver did not start: " + self.stderr())
        info = json.loads(line)
        self.base = info["listening"]
        self.port = int(self.base.rsplit(":", 1)[1])
        self.receipt_public_key = bytes.fromhex(info["receipt_key"]["public_key_hex"])
        self.receipt_kid = info["receipt_key"]["kid"]

    def events_url(self, inst="inst-test"):
        return f"{self.base}/v2/local-vault/installations/{inst}/events"

    def set_faults(self, *specs):
        """Replaces the run-time fault rules (the file is re-read when it changes)."""
        tmp = self.fault_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(s + "\n" for s in specs))
        os.rename(tmp, self.fault_file)

    def events(self):
        if not os.path.exists(self.events_log):
            return []
        with open(self.events_log) as f:
            return [json.loads(l) for l in f if l.strip()]

    def event_count(self):
        try:
            with open(self.events_log, "rb") as f:
                return f.read().count(b"\n")
        except OSError:
            return 0

    def stderr(self):
        try:
            with open(self.stderr_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()


def public_key_hex(vault):
    return vault.run(["public-key", "--format", "hex"], check=0).stdout.strip()


def relay_env(vault, receiver, pki, inst="inst-test"):
    vault.env["ATTESTO_LOCAL_VAULT_RELAY_URL"] = receiver.events_url(inst)
    vault.env["ATTESTO_LOCAL_VAULT_CA_FILE"] = pki.ca


def enqueue(vault, stream, ref, payload=None, check=0):
    payload = payload if payload is not None else {"ref": ref, "n": 1}
    return vault.run(["enqueue", "--stream-id", stream, "--source-ref", ref, "--payload-file", "-"],
                     input=json.dumps(payload), check=check)


def enqueue_batch(vault, items):
    """items: (stream, ref, payload) tuples, one --jsonl batch."""
    lines = "".join(json.dumps({"stream_id": s, "source_ref": r, "payload": p}) + "\n"
                    for s, r, p in items)
    return vault.run(["enqueue", "--jsonl", "-"], input=lines, check=0, timeout=600)


def drain_once(vault, *args, check=None):
    p = vault.run(["drain-once", "--json", "--backoff-base-ms", "5", *args], check=check)
    summary = json.loads(p.stdout) if p.stdout.strip() else None
    return p, summary


def items(vault, state=None):
    """Every spool item as the CLI shows it (list --json, one object per
    line, paged with --after)."""
    got, after = [], 0
    while True:
        args = ["list", "--json", "--limit", "10000", "--after", str(after)]
        args += ["--state", state] if state else []
        out = vault.run(args, check=0).stdout
        page = [json.loads(l) for l in out.splitlines() if l.strip()]
        got += page
        if len(page) < 10000:
            return got
        after = page[-1]["seq"]


def show(vault, event_id):
    return json.loads(vault.run(["show", event_id, "--json"], check=0).stdout)


def status(vault):
    """status --json: {"counts":{state: n},"paused_until","pause_reason",...}"""
    return json.loads(vault.run(["status", "--json"], check=0).stdout)


def counts(vault):
    return status(vault)["counts"]


def event_id(ref, inst="inst-test"):
    return f"local-vault:{inst}:{ref}"


def verify_envelope(body, vault_pk_hex):
    """Independent check (python-cryptography) that the vault signed body."""
    env = json.loads(body)
    sig = bytes.fromhex(env["local_signature"]["signature"])
    unsigned = {k: v for k, v in env.items() if k != "local_signature"}
    # The envelope's members are identifiers, hex and integers: Python's
    # sorted compact dump is their JCS form.
    canon = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(vault_pk_hex)).verify(
        sig, ENVELOPE_DOMAIN + canon.encode())


def verify_receipt(receipt, receiver):
    sig = bytes.fromhex(receipt["receipt"]["signature"])
    assert receipt["receipt"]["kid"] == receiver.receipt_kid
    statement = {k: v for k, v in receipt.items() if k != "receipt"}
    canon = json.dumps(statement, sort_keys=True, separators=(",", ":"))
    ed25519.Ed25519PublicKey.from_public_bytes(receiver.receipt_public_key).verify(
        sig, RECEIPT_DOMAIN + canon.encode())


def assert_log_agrees(vault, receiver, vault_pk_hex):
    """Every receipted item is in the receiver's log with the same envelope
    hash, and nothing is in the log that this spool did not sign."""
    spool = {i["event_id"]: i for i in items(vault)}
    log = receiver.events()
    logged = {}
    for e in log:
        body = e["body"].encode()
        assert hashlib.sha256(body).hexdigest() == e["envelope_hash"]
        verify_envelope(e["body"], vault_pk_hex)
        assert e["event_id"] in spool, f"{e['event_id']} in the log but not in the spool"
        assert spool[e["event_id"]]["envelope_hash"] == e["envelope_hash"]
        assert e["event_id"] not in logged, f"{e['event_id']} logged twice"
        logged[e["event_id"]] = e
    for ev, it in spool.items():
        if it["state"] == "receipted":
            assert ev in logged, f"{ev} receipted but the receiver never accepted it"
            assert logged[ev]["envelope_hash"] == it["envelope_hash"]
    return logged


def wait_for(pred, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
