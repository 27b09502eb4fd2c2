# SPDX-License-Identifier: Apache-2.0
"""Crash: kill -9 at random moments during a stream of submissions, to the
endpoint (the server is killed) and through the CLI (the CLI is killed).
After each restart: no receipt was ever output that the database does not
hold byte for byte, and the head equals the last receipt that was output —
or is one ahead when the killed request had committed but its answer was
lost, in which case submitting that same checkpoint again returns the stored
receipt (a replay), after which the head equals the last output again."""
import http.client
import json
import random
import subprocess
import threading
import time

from lvtest import LV_BIN
from witnesslib import (Server, Vault, cli_args, h, head, public_key_hex, request_body,
                        stored_receipts, token_copy, verify_document, volume_env, ASAN)

T = "ten_crash"
SERVER_KILLS = 6 if ASAN else 15
CLI_KILLS = 25 if ASAN else 80


class Chain:
    """One stream's view from the submitting side: what was output."""

    def __init__(self, vault, stream):
        self.vault, self.stream = vault, stream
        self.outputs = {}       # seq -> receipt bytes (as output, without the newline)
        self.last = -1          # seq of the last receipt output
        self.lost_answers = 0   # restarts that found a committed, unanswered checkpoint

    def req(self, seq):
        return (T, self.stream, f"c{seq}", seq, h(self.stream, seq),
                h(self.stream, seq - 1) if seq else None)

    def record(self, seq, body):
        doc = json.loads(body)
        assert doc["statement"]["checkpoint_seq_no"] == seq
        assert doc["statement"]["checkpoint_hash"] == h(self.stream, seq)
        self.outputs[seq] = body.rstrip(b"\n")
        self.last = max(self.last, seq)

    def check_after_restart(self, resubmit):
        """The invariants, then the resubmission of a lost answer."""
        stored = stored_receipts(self.vault)
        for seq, body in self.outputs.items():
            assert stored.get((T, self.stream, seq)) == (h(self.stream, seq), body), \
                f"seq {seq} was output but the database does not hold it"
        hd = head(self.vault, T, self.stream)
        hd = -1 if hd is None else hd
        assert hd in (self.last, self.last + 1), (hd, self.last)
        if hd == self.last + 1:
            # Committed, answer lost with the killed process: the same
            # submission now returns the stored receipt, byte for byte.
            self.lost_answers += 1
            result, body = resubmit(hd)
            assert result == "replayed", (result, body)
            assert body.rstrip(b"\n") == stored[(T, self.stream, hd)][1]
            self.record(hd, body)
        after = head(self.vault, T, self.stream)
        assert (-1 if after is None else after) == self.last


def test_kill_9_of_the_server_during_submissions(tmp_path):
    vault = Vault(tmp_path)
    chain = Chain(vault, "str_srv")
    rng = random.Random(1)

    failures = []
    for _ in range(SERVER_KILLS):
        srv = Server(vault, ["--rate-limit", "0"], env=volume_env(vault.env))
        try:
            def resubmit(seq):
                st, hd, body = srv.post(request_body(*chain.req(seq)))
                return (hd.get("attesto-witness-result") if st == 200 else f"http {st}"), body

            chain.check_after_restart(resubmit)
            stop = threading.Event()

            def drive():
                conn = srv.connection(timeout=30)
                seq = chain.last + 1
                try:
                    while not stop.is_set():
                        st, hd, body = srv.post(request_body(*chain.req(seq)), conn=conn)
                        if st != 200 or hd["attesto-witness-result"] != "accepted":
                            failures.append((seq, st, body))
                            return
                        chain.record(seq, body)
                        seq += 1
                except (ConnectionError, http.client.HTTPException, OSError):
                    pass  # the server died under the request: its answer is lost
                finally:
                    conn.close()

            t = threading.Thread(target=drive)
            t.start()
            # Let the stream get going, then kill at a random moment of it.
            n0 = len(chain.outputs)
            deadline = time.time() + 30
            while len(chain.outputs) == n0 and t.is_alive() and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.3))
            srv.proc.kill()                       # kill -9, in the middle of the stream
            srv.proc.wait()
            stop.set()
            t.join(timeout=60)
            assert not failures, failures
        finally:
            if srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait()
            srv.log.close()
    srv = Server(vault)
    try:
        chain.check_after_restart(
            lambda seq: (lambda st, hd, body: (hd.get("attesto-witness-result"), body))(
                *srv.post(request_body(*chain.req(seq)))))
    finally:
        assert srv.stop() == 0
    assert chain.last >= SERVER_KILLS  # the stream did progress between kills
    print(f"server kills: {SERVER_KILLS}, receipts: {chain.last + 1}, "
          f"answers lost after commit: {chain.lost_answers}")
    pk = public_key_hex(vault)
    for body in chain.outputs.values():
        verify_document(body + b"\n", pk)


def test_kill_9_of_the_cli_during_submissions(tmp_path):
    vault = Vault(tmp_path)
    chain = Chain(vault, "str_cli")
    rng = random.Random(2)
    env = volume_env(vault.env)

    def run_cli(seq, cli_env):
        p = subprocess.run([LV_BIN] + cli_args(*chain.req(seq)), env=cli_env, capture_output=True,
                           timeout=60)
        return p

    def resubmit(seq):
        p = run_cli(seq, env)
        return ("replayed" if p.returncode == 0 and b"replayed" in p.stderr else
                f"exit {p.returncode}"), p.stdout

    # How long one submission takes, to spread the kills over all of it.
    t0 = time.monotonic()
    for _ in range(3):
        seq = chain.last + 1
        p = run_cli(seq, env)
        assert p.returncode == 0, p.stderr
        chain.record(seq, p.stdout)
    span = (time.monotonic() - t0) / 3

    killed_early = completed = 0
    for i in range(CLI_KILLS):
        chain.check_after_restart(resubmit)
        seq = chain.last + 1
        # The process to be killed logs in on its own copy of the token:
        # SoftHSM rewrites its token file at every login, and a kill in the
        # middle of that write would break the token for every later test
        # step (a hardware token has no such file).
        kenv = dict(token_copy(vault, "kill"), **{k: env[k] for k in ("ASAN_OPTIONS",
                                                                       "LSAN_OPTIONS") if k in env})
        proc = subprocess.Popen([LV_BIN] + cli_args(*chain.req(seq)), env=kenv,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0, 1.2 * span))
        proc.kill()
        out, err = proc.communicate()
        if proc.returncode == 0:
            # It finished before the kill: a complete document was output.
            chain.record(seq, out)
            completed += 1
        else:
            # Killed: whatever it printed (nothing, or a whole line) counts
            # as output only when it is a complete receipt.
            assert out in (b"",) or out.endswith(b"\n"), out
            if out:
                chain.record(seq, out)
            killed_early += 1
    chain.check_after_restart(resubmit)
    assert killed_early > 0
    print(f"CLI kills: {killed_early} (+{completed} finished first), "
          f"answers lost after commit: {chain.lost_answers}")
    pk = public_key_hex(vault)
    for body in chain.outputs.values():
        verify_document(body + b"\n", pk)
