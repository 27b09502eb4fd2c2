#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Crash soaks: vault processes SIGKILLed at random moments while they work.

relay:   enqueue batches and drain-loop against the reference receiver over
         real TLS, with random transient receiver faults (some after the
         envelope was accepted), every vault process liable to SIGKILL. At the
         end: every enqueued item is receipted with its original envelope
         hash; the receiver's log holds no envelope the spool did not sign;
         no item is receipted without a receipt the receiver signed for it
         (a verified ack); nothing is lost.
witness: concurrent witness-checkpoint processes and a witness-serve endpoint
         (SIGKILLed and restarted) submit extending, conflicting, replayed
         and gapped checkpoints. Invariant: no two signed statements accept
         different hashes for one (stream, seq); every receipt a process
         printed is the one stored (nothing is returned before COMMIT).

  tests/reliability/soak.py [--long] [--seed N] [--relay-seconds S]
                            [--witness-seconds S] [--only relay|witness]
Short form (CI, the default): 20 s relay, 15 s witness. --long: 600 s each.
Prints one JSON line of figures per soak; exit 0 when every invariant held.
Needs the environment of the tests (LV_BIN, LV_BUILD_DIR, PYTHONPATH with
tests/pylib), as ctest sets it; run from a build tree it finds them itself.
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, os.path.join(HERE, "..", "relay"))

import lvtest  # noqa: E402
from faultlib import NotifyListener, Shim  # noqa: E402
from relaylib import PKI, Receiver, public_key_hex, relay_env, verify_envelope, verify_receipt  # noqa: E402

# Token faults the relay soak injects through the PKCS#11 shim, one rule set
# at a time (each process that loads it meets each fault once).
TOKEN_FAULTS = [
    [],
    ["C_Decrypt CKR_GENERAL_ERROR times=1"],
    ["C_Decrypt CKR_SESSION_HANDLE_INVALID times=1"],
    ["C_Decrypt CKR_DEVICE_REMOVED times=1"],
    ["C_Decrypt CKR_USER_NOT_LOGGED_IN times=1"],
    ["C_Sign CKR_GENERAL_ERROR after=5 times=1"],
    ["C_Encrypt CKR_DEVICE_REMOVED after=8 times=1"],
]

RECEIPT_DOMAIN = b"attesto.local-vault.witness-receipt.v1\n"


class SoakFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise SoakFailure(msg)


def token_outage(rc, err, outages):
    """A vault process that stopped because the token failed it (exit 5,
    "stops taking work") is what the design promises under a token fault;
    the soak's SoftHSM file store produces such faults when processes log in
    concurrently. Counted, and reported; a rejected or locked PIN is never
    acceptable (it would count towards locking the token)."""
    if rc != 5:
        return False
    check("CKR_PIN_INCORRECT" not in err and "CKR_PIN_LOCKED" not in err
          and "PIN is locked" not in err, f"PIN refused under load: {err}")
    outages.append(err.strip())
    return True


class TokenStoreGuard:
    """SoftHSM's file store rewrites token.object in place at every C_Login
    (truncate, then write). A process SIGKILLed in between leaves it empty and
    the token is gone for every later process: measured, 1 in ~5 kills during
    start-up. That is SoftHSM's durability, not the vault's (a hardware token
    has no such file; Debian's SoftHSM has no transactional store), so the
    soak puts back the last whole version after a kill left it cut short,
    counts every restore and reports the count (docs/reliability.md)."""

    def __init__(self, vault):
        tokens = os.path.join(vault.env["LV_TOKEN_DIR"], "tokens")
        (d,) = os.listdir(tokens)
        self.path = os.path.join(tokens, d, "token.object")
        with open(self.path, "rb") as f:
            self.good = f.read()
        self.restores = 0
        self.lock = threading.Lock()

    def check(self):
        with self.lock:
            try:
                with open(self.path, "rb") as f:
                    cur = f.read()
            except OSError:
                cur = b""
            # Every login re-encrypts parts of it (the content changes, the
            # size does not): a file of the right size is a valid version.
            if len(cur) == len(self.good):
                self.good = cur
                return
            tmp = self.path + ".soak"
            with open(tmp, "wb") as f:
                f.write(self.good)
            os.rename(tmp, self.path)
            self.restores += 1


class Killer:
    """Starts vault processes and SIGKILLs some of them at random moments."""

    def __init__(self, rng, env, guard=None):
        self.rng = rng
        self.env = env
        self.kills = 0
        self.lock = threading.Lock()
        self.guard = guard

    def run(self, args, input=None, kill_prob=0.0, max_ms=400, timeout=120):
        """Runs the binary; with probability kill_prob it is SIGKILLed after
        a random delay. Returns (returncode, stdout, killed)."""
        p = subprocess.Popen([lvtest.LV_BIN] + args, env=self.env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kill_at = None
        if self.rng.random() < kill_prob:
            kill_at = self.rng.uniform(0, max_ms) / 1000.0
        timer = None
        killed = [False]

        def do_kill():
            if p.poll() is None:
                p.kill()
                killed[0] = True
                with self.lock:
                    self.kills += 1

        if kill_at is not None:
            timer = threading.Timer(kill_at, do_kill)
            timer.start()
        try:
            out, err = p.communicate(input.encode() if input else None, timeout=timeout)
        finally:
            if timer:
                timer.cancel()
        if killed[0] and self.guard:
            self.guard.check()
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), killed[0]


# ---- relay soak -------------------------------------------------------------------

def run_until(seconds, enough, cap):
    """Sleeps `seconds`, then on until enough() or `cap` seconds in all: a
    slow build (ASan on a busy machine) still gets the work it needs."""
    t0 = time.monotonic()
    time.sleep(seconds)
    while not enough() and time.monotonic() - t0 < cap:
        time.sleep(0.5)


def relay_soak(workdir, seconds, seed, cap=None):
    rng = random.Random(seed)
    vault = lvtest.Vault(os.path.join(workdir, "vault"))
    pk = public_key_hex(vault)
    pki = PKI(_mkdir(workdir, "pki"))
    rec = Receiver(os.path.join(workdir, "receiver"), pki, register=[("inst-test", pk)],
                   seed=seed)
    # Random transient faults, some after the envelope was accepted (the
    # retry must then get the same ack); in the fault file, so they can be
    # switched off for the final drain.
    rec.set_faults("random:prob=0.15:count=inf", "random:prob=0.08:count=inf:when=after")
    relay_env(vault, rec, pki)
    # Token faults through the shim; half the batches opt in to relaying the
    # payload, so leasing decrypts sealed envelopes too.
    shim = Shim(vault)
    guard = TokenStoreGuard(vault)
    killer = Killer(rng, vault.env, guard)
    submitted = {}   # event_id -> line (all items ever handed to enqueue)
    printed = {}     # event_id -> envelope hash an enqueue reported
    stop = threading.Event()
    stats = {"enqueue_runs": 0, "enqueue_killed": 0, "drain_runs": 0, "drain_killed": 0}
    errors, outages = [], []

    def enqueuer():
        n = 0
        while not stop.is_set():
            k = rng.randint(1, 25)
            sealed = rng.random() < 0.5
            lines = []
            for _ in range(k):
                ref = f"r{n}"
                n += 1
                line = json.dumps({"stream_id": f"s{rng.randint(0, 5)}", "source_ref": ref,
                                   "payload": {"n": n, "blob": rng.getrandbits(52)}})
                submitted[f"local-vault:inst-test:{ref}"] = (line, sealed)
                lines.append(line)
            rc, out, err, killed = killer.run(
                ["enqueue", "--jsonl", "-"] + (["--include-payload"] if sealed else []),
                input="\n".join(lines) + "\n", kill_prob=0.35, max_ms=250)
            stats["enqueue_runs"] += 1
            stats["enqueue_killed"] += killed
            if not killed and rc != 0 and not token_outage(rc, err, outages):
                errors.append(f"enqueue exit {rc}: {err.strip()}")
            for l in out.splitlines():
                try:
                    r = json.loads(l)
                except ValueError:
                    continue  # a line cut by the kill
                printed[r["event_id"]] = r["envelope_hash"]
            time.sleep(rng.uniform(0, 0.05))

    notify_dir = tempfile.mkdtemp(prefix="lv-soak-n.")  # short: unix socket paths

    def drainer():
        n = 0
        while not stop.is_set():
            n += 1
            nl = NotifyListener(_mkdir(notify_dir, str(n)))
            p = subprocess.Popen(
                [lvtest.LV_BIN, "drain-loop", "--backoff-base-ms", "20", "--timeout-ms", "400",
                 "--lease-ms", "1000", "--max-in-flight", "8"], env=nl.env(dict(vault.env)),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            # Most kills hit a working loop (after READY, however slow the
            # build is to start); some hit start-up (spool open, recovery).
            try:
                if rng.random() < 0.2:
                    p.wait(rng.uniform(0, 2.0))
                else:
                    nl.wait_for("READY", lambda x: x == "1", 120)
                    p.wait(rng.uniform(0.2, 4.0))
            except (subprocess.TimeoutExpired, AssertionError):
                pass
            killed = p.poll() is None
            if killed:
                p.kill()
                with killer.lock:
                    killer.kills += 1
            err = p.communicate()[1].decode(errors="replace")
            nl.close()
            if killed:
                guard.check()
            stats["drain_runs"] += 1
            stats["drain_killed"] += killed
            if not killed and p.returncode != 0 and not token_outage(p.returncode, err, outages):
                errors.append(f"drain-loop exit {p.returncode}: {err.strip()}")

    def token_faulter():
        while not stop.is_set():
            shim.set_rules(*rng.choice(TOKEN_FAULTS))
            stop.wait(rng.uniform(0.5, 2.0))
        shim.clear()

    threads = [threading.Thread(target=enqueuer), threading.Thread(target=drainer),
               threading.Thread(target=token_faulter)]
    for t in threads:
        t.start()
    run_until(seconds, lambda: (stats["enqueue_killed"] >= 3 and stats["drain_killed"] >= 3
                                and len(submitted) >= 200
                                and receiver_stats(rec)["faults_fired"] >= 10
                                and len(shim.injected()) >= 3), cap or seconds)
    stop.set()
    for t in threads:
        t.join(180)
    check(not errors, f"vault processes failed without being killed: {errors[:3]}")
    check(not shim.bad_rules(), "the shim understood every rule")

    # Hand every item to the vault once more (as a source whose enqueue was
    # killed would): each is stored exactly once, with its first envelope.
    shim.clear()
    out = ""
    for sealed in (False, True):
        lines = [l for l, sl in submitted.values() if sl == sealed]
        if not lines:
            continue
        rc, o, err, _ = killer.run(
            ["enqueue", "--jsonl", "-"] + (["--include-payload"] if sealed else []),
            input="\n".join(lines) + "\n", timeout=600)
        check(rc == 0, f"final enqueue: {err}")
        out += o
    for l in out.splitlines():
        r = json.loads(l)
        ev = r["event_id"]
        if ev in printed:
            check(r["status"] == "duplicate" and r["envelope_hash"] == printed[ev],
                  f"{ev}: re-enqueue gave {r}, first enqueue printed {printed[ev]}")
        printed[ev] = r["envelope_hash"]
    check(set(printed) == set(submitted), "every submitted item is stored")

    # Faults off, one last drain without kills until everything is receipted.
    rec.set_faults()
    time.sleep(0.1)
    faults_fired = receiver_stats(rec)["faults_fired"]
    deadline = time.monotonic() + 300
    while True:
        vault.run(["drain-once", "--json", "--backoff-base-ms", "1", "--timeout-ms", "2000",
                   "--lease-ms", "5000"], timeout=300)
        st = json.loads(vault.run(["status", "--json"], check=0).stdout)["counts"]
        if st["queued"] == 0 and st["relaying"] == 0:
            break
        check(time.monotonic() < deadline, f"final drain did not finish: {st}")
        time.sleep(0.2)
    rec.stop()
    subprocess.run(["rm", "-rf", notify_dir])

    # The checks of the issue, on the spool file read independently.
    con = sqlite3.connect(f"file:{vault.env['ATTESTO_LOCAL_VAULT_SPOOL_DB']}?mode=ro", uri=True)
    check(con.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "spool integrity")
    spool = {ev: {"stream_id": st, "state": state, "envelope_hash": eh, "receipt": rc}
             for ev, st, state, eh, rc in con.execute(
                 "SELECT event_id, stream_id, state, envelope_hash, receipt FROM items")}
    con.close()
    check(set(spool) == set(submitted),
          f"nothing lost: {len(spool)} stored, {len(submitted)} submitted")
    logs = rec.events()
    logged = {}
    for e in logs:
        body = e["body"]
        check(hashlib.sha256(body.encode()).hexdigest() == e["envelope_hash"], "log hash")
        verify_envelope(body, pk)  # the spool's key signed it
        ev = e["event_id"]
        check(ev in spool, f"{ev} in the receiver's log but not in the spool")
        check(spool[ev]["envelope_hash"] == e["envelope_hash"],
              f"{ev}: the receiver holds another envelope than the spool signed")
        logged.setdefault(ev, set()).add(e["envelope_hash"])
    for ev, it in spool.items():
        check(it["state"] == "receipted", f"{ev} ended {it['state']}")
        check(it["envelope_hash"] == printed[ev], f"{ev}: envelope hash changed")
        check(ev in logged, f"{ev} receipted but no receiver accepted it")
        receipt = json.loads(it["receipt"]) if it["receipt"] else None
        check(receipt and receipt["event_id"] == ev and receipt["stream_id"] == it["stream_id"],
              f"{ev}: stored receipt does not name the item")
        verify_receipt(receipt, rec)  # signed by the receiver: a verified ack
    figures = {"soak": "relay", "seconds": seconds, "seed": seed, "items": len(spool),
               "kills": killer.kills, "receiver_faults": faults_fired,
               "token_faults": len(shim.injected()),
               "softhsm_store_restores": guard.restores, "token_outage_exits": len(outages),
               "receiver_log_entries": len(logs), **stats}
    if outages:
        figures["token_outage_sample"] = sorted(set(outages))[:3]
    return figures


def receiver_stats(rec):
    import ssl
    ctx = ssl.create_default_context(cafile=None)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, port = "127.0.0.1", rec.port
    c = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    c.request("GET", "/v2/local-vault/receiver/stats")
    return json.loads(c.getresponse().read())


# ---- witness soak -------------------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def witness_soak(workdir, seconds, seed, cap=None):
    rng = random.Random(seed)
    vault = lvtest.Vault(os.path.join(workdir, "witness-vault"))
    pk = public_key_hex(vault)
    db = vault.env["ATTESTO_LOCAL_VAULT_WITNESS_DB"]
    guard = TokenStoreGuard(vault)
    killer = Killer(rng, vault.env, guard)
    streams = ["ws0", "ws1", "ws2"]
    docs = []  # every complete document a process or the endpoint returned
    docs_lock = threading.Lock()
    stop = threading.Event()
    stats = {"cli_runs": 0, "cli_killed": 0, "http_requests": 0, "server_kills": 0,
             "server_starts": 0, "http_503": 0}
    errors, outages = [], []

    def h(stream, seq, variant):
        return hashlib.sha256(f"{stream}/{seq}/{variant}".encode()).hexdigest()

    def head(stream):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                row = con.execute("SELECT h.seq, c.checkpoint_hash FROM heads h JOIN checkpoints c"
                                  " USING (witness_id, tenant_id, stream_id, seq)"
                                  " WHERE h.stream_id = ?", (stream,)).fetchone()
            finally:
                con.close()
            return row
        except sqlite3.Error:
            return None

    def request():
        stream = rng.choice(streams)
        hd = head(stream)
        seq, prev = (0, None) if hd is None else (hd[0], hd[1])
        r = rng.random()
        if hd is None:
            return stream, 1, h(stream, 1, rng.randint(0, 1)), None
        if r < 0.6:     # extend (one of two candidate hashes: racing forks)
            return stream, seq + 1, h(stream, seq + 1, rng.randint(0, 1)), prev
        if r < 0.7:     # replay the head
            return stream, seq, prev, None if seq == 1 else h(stream, seq - 1, 0)
        if r < 0.85:    # conflicting or stale
            s = rng.randint(1, seq)
            return stream, s, h(stream, s, rng.randint(0, 3)), None
        return stream, seq + rng.randint(2, 3), h(stream, seq + 2, 0), prev  # gap

    def record(text):
        try:
            d = json.loads(text)
        except ValueError:
            return
        with docs_lock:
            docs.append(d)

    def cli_worker():
        while not stop.is_set():
            stream, seq, hsh, prev = request()
            args = ["witness-checkpoint", "--tenant-id", "t1", "--stream-id", stream,
                    "--checkpoint-id", f"cp-{seq}-{hsh[:6]}", "--checkpoint-seq-no", str(seq),
                    "--checkpoint-hash", hsh]
            if prev:
                args += ["--previous-checkpoint-hash", prev]
            rc, out, err, killed = killer.run(args, kill_prob=0.3, max_ms=150)
            stats["cli_runs"] += 1
            stats["cli_killed"] += killed
            if not killed and rc not in (0, 2, 3, 6) and not token_outage(rc, err, outages):
                errors.append(f"witness-checkpoint exit {rc}: {err.strip()}")
            if not killed and rc in (0, 3) and out.strip():
                record(out)

    sock = os.path.join(workdir, "witness.sock")
    server = {"p": None}

    def start_server():
        env = dict(vault.env)
        server["p"] = subprocess.Popen([lvtest.LV_BIN, "witness-serve", "--listen",
                                        f"unix:{sock}"], env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        stats["server_starts"] += 1

    def server_killer():
        while not stop.is_set():
            time.sleep(rng.uniform(0.3, 2.0))
            p = server["p"]
            if p and p.poll() is None:
                p.kill()
                p.wait()
                guard.check()
                stats["server_kills"] += 1
                killer.kills += 1
            start_server()

    def http_worker():
        while not stop.is_set():
            stream, seq, hsh, prev = request()
            body = {"tenant_id": "t1", "stream_id": stream, "checkpoint_id": f"cp-{seq}-{hsh[:6]}",
                    "checkpoint_seq_no": seq, "checkpoint_hash": hsh}
            if prev:
                body["previous_checkpoint_hash"] = prev
            try:
                c = UnixHTTPConnection(sock)
                c.request("POST", "/v1/witness/checkpoints", json.dumps(body),
                          {"Content-Type": "application/json"})
                resp = c.getresponse()
                raw = resp.read()
                data = raw.decode()
                c.close()
            except (OSError, http.client.HTTPException):
                time.sleep(0.02)
                continue
            except UnicodeDecodeError:
                errors.append(f"witness-serve answered {resp.status} with invalid UTF-8: {raw!r}")
                continue
            stats["http_requests"] += 1
            if resp.status == 503:
                stats["http_503"] += 1
            if resp.status in (200, 409):
                record(data)
            elif resp.status not in (400, 422, 429, 503):
                errors.append(f"witness-serve answered {resp.status}: {data[:200]}")

    start_server()
    threads = [threading.Thread(target=cli_worker) for _ in range(3)]
    threads += [threading.Thread(target=http_worker) for _ in range(2)]
    threads.append(threading.Thread(target=server_killer))
    for t in threads:
        t.start()

    def enough():
        # Distinct documents: a replay hands out the first answer again,
        # byte for byte, and must not count as another stored checkpoint
        # (the figures count the stored rows).
        with docs_lock:
            seen = {(d.get("result"), json.dumps(d, sort_keys=True)) for d in docs}
        results = [r for r, _ in seen]
        return (stats["cli_killed"] >= 3 and stats["server_kills"] >= 2
                and results.count("accepted") >= 10 and results.count("fork_evidence") >= 1)

    run_until(seconds, enough, cap or seconds)
    stop.set()
    for t in threads:
        t.join(120)
    if server["p"] and server["p"].poll() is None:
        server["p"].terminate()
        server["p"].wait(30)
    check(not errors, f"witness processes failed without being killed: {errors[:3]}")

    # Every signed statement: those handed out, and those stored.
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    stored = con.execute("SELECT stream_id, seq, checkpoint_hash, statement_hash, receipt, "
                         "previous_hash FROM checkpoints").fetchall()
    forks = [json.loads(r[0]) for r in con.execute("SELECT document FROM fork_evidence")]
    con.close()
    accepts = {}  # (stream, seq) -> {hash}
    stored_by_key = {}
    for stream, seq, hsh, sh, receipt, prevh in stored:
        accepts.setdefault((stream, seq), set()).add(hsh)
        stored_by_key[(stream, seq)] = sh
        verify_statement(json.loads(receipt), pk)
    receipts_out = 0
    for d in docs + forks:
        verify_statement(d, pk)
        st = d["statement"]
        if d["result"] in ("accepted", "replayed"):
            receipts_out += 1
            key = (st["stream_id"], st["checkpoint_seq_no"])
            accepts.setdefault(key, set()).add(st["checkpoint_hash"])
            check(stored_by_key.get(key) == d["statement_hash"],
                  f"{key}: a receipt was handed out that is not the stored one")
        else:
            # Fork evidence quotes the accepted checkpoint: it too must agree.
            acc = st.get("accepted_checkpoint")
            if acc:
                key = (st["stream_id"], acc["checkpoint_seq_no"])
                accepts.setdefault(key, set()).add(acc["checkpoint_hash"])
    for key, hashes in accepts.items():
        check(len(hashes) == 1, f"{key}: signed statements accept {len(hashes)} hashes: {hashes}")
    # The accepted history of each stream is one chain.
    for stream in streams:
        rows = sorted((seq, hsh, prevh) for s, seq, hsh, sh, r, prevh in stored if s == stream)
        for (s1, h1, _), (s2, h2, p2) in zip(rows, rows[1:]):
            check(s2 == s1 + 1 and p2 == h1, f"{stream}: history broken at {s1}->{s2}")
    figures = {"soak": "witness", "seconds": seconds, "seed": seed, "kills": killer.kills,
               "softhsm_store_restores": guard.restores,
               "statements_checked": len(docs) + len(forks) + len(stored),
               "accepted_checkpoints": len(stored), "fork_evidence": len(forks),
               "receipts_handed_out": receipts_out, "token_outage_exits": len(outages), **stats}
    if outages:
        figures["token_outage_sample"] = sorted(set(outages))[:3]
    return figures


def verify_statement(doc, pk_hex):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    st = doc["statement"]
    canon = json.dumps(st, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    check(hashlib.sha256(canon).hexdigest() == doc["statement_hash"], "statement hash")
    domain = RECEIPT_DOMAIN if st["kind"] == "witness_receipt" else \
        b"attesto.local-vault.fork-evidence.v1\n"
    ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(pk_hex)).verify(
        bytes.fromhex(doc["signature"]["signature"]), domain + canon)


def _mkdir(base, name):
    d = os.path.join(base, name)
    os.makedirs(d, exist_ok=True)
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--long", action="store_true", help="600 s per soak instead of the CI form")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--relay-seconds", type=float, default=None)
    ap.add_argument("--witness-seconds", type=float, default=None)
    ap.add_argument("--only", choices=["relay", "witness"])
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "big")
    relay_s = a.relay_seconds or (600 if a.long else 20)
    witness_s = a.witness_seconds or (600 if a.long else 15)
    work = tempfile.mkdtemp(prefix="lv-soak.")
    ok = True
    try:
        for name, fn, secs in (("relay", relay_soak, relay_s), ("witness", witness_soak, witness_s)):
            if a.only and a.only != name:
                continue
            t0 = time.monotonic()
            try:
                fig = fn(_mkdir(work, name), secs, seed)
                fig["wall_seconds"] = round(time.monotonic() - t0, 1)
                print(json.dumps(fig), flush=True)
            except Exception as e:  # report the seed that reproduces it
                ok = False
                print(json.dumps({"soak": name, "seed": seed, "failed": f"{type(e).__name__}: {e}"}),
                      flush=True)
    finally:
        if not a.keep:
            subprocess.run(["rm", "-rf", work])
        else:
            print(f"work directory kept: {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
