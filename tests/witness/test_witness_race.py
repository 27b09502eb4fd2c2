# SPDX-License-Identifier: Apache-2.0
"""Race: the CLI and the endpoint, on the same database, submit competing
checkpoints for the same (stream, seq), both extending the same head, at
randomly staggered moments so that either may win. Exactly one hash is
accepted per (stream, seq); the other submission gets conflicting_checkpoint
evidence naming the winner; the database agrees with every answer.

The CLI workers of the two streams each use a copy of the token (the same
key): SoftHSM rewrites its token file at every login and two processes
logging in at once can see it torn (a SoftHSM limitation, not the witness's).
The endpoint and the CLI still share the same key and the same database."""
import json
import random
import statistics
import subprocess
import threading
import time

from lvtest import LV_BIN
from witnesslib import (Server, Vault, cli_args, cli_outcome, h, http_outcome, public_key_hex,
                        request_body, snapshot, stored_receipts, token_copy, verify_document,
                        volume_env, ASAN)

T = "ten_race"
# 2 streams x SEQS seqs x 2 competitors (1600 submissions). The ASan build runs the same race
# with fewer rounds: each process there costs ~5x more.
SEQS = 60 if ASAN else 400
STREAMS = ["str_a", "str_b"]


def cli_env(vault, name):
    # The endpoint's own token, not a copy: the token anchors one witness
    # state per key (docs/witness.md, "The anchor"), which CLI and endpoint
    # share like the database.
    return volume_env(vault.env)


def cli_seconds(vault, env):
    """The median time of one CLI submission, to stagger the competitors."""
    times = []
    for i in range(5):
        t0 = time.monotonic()
        p = subprocess.run([LV_BIN] + cli_args(T, "str_calibrate", f"c{i}", i, h("cal", i),
                                               h("cal", i - 1) if i else None),
                           env=env, capture_output=True)
        assert p.returncode == 0, p.stderr
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def test_cli_and_endpoint_compete_for_every_seq(tmp_path):
    vault = Vault(tmp_path)
    pk = public_key_hex(vault)
    envs = {s: cli_env(vault, s) for s in STREAMS}
    srv = Server(vault, ["--rate-limit", "0"], env=volume_env(vault.env))
    span = cli_seconds(vault, envs[STREAMS[0]])
    rng = random.Random(20261128)
    delays = {(s, q): rng.uniform(0, 1.2 * span) for s in STREAMS for q in range(SEQS)}
    winners, failures, wins = {}, [], {"cli": 0, "http": 0}
    token_retries = [0]
    lock = threading.Lock()

    def compete(stream):
        import http.client
        conn = srv.connection()
        prev = None
        try:
            for seq in range(SEQS):
                hc, hh = h("cli", stream, seq), h("http", stream, seq)
                proc = subprocess.Popen([LV_BIN] + cli_args(T, stream, f"cli{seq}", seq, hc, prev),
                                        env=envs[stream], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                time.sleep(delays[(stream, seq)])
                web = http_outcome(*srv.post(request_body(T, stream, f"http{seq}", seq, hh, prev),
                                             conn=conn))
                # A state_integrity refusal here can only be SoftHSM showing one
                # process another's new anchor late (see below): submitted
                # again, it must come to a decision.
                for _ in range(3):
                    if web.result != "token" or b"state_integrity" not in web.body:
                        break
                    time.sleep(0.2)
                    web = http_outcome(*srv.post(request_body(T, stream, f"http{seq}", seq, hh,
                                                              prev), conn=conn))
                    if web.result == "replayed":
                        web.result = "accepted"
                    with lock:
                        token_retries[0] += 1
                out, err = proc.communicate(timeout=60)
                cli = cli_outcome(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
                # SoftHSM keeps its token in files that two processes writing
                # at once (a login, an anchor) can catch half-written
                # (CKR_GENERAL_ERROR), and shows one process the anchors
                # another wrote only once it re-indexes them (a transient
                # state_integrity refusal, exit 8): such a submission is made
                # again, and must then come to a decision like any other.
                for _ in range(3):
                    if cli.result not in ("token", "exit 8"):
                        break
                    retry = subprocess.run(proc.args, env=envs[stream], capture_output=True,
                                           timeout=60)
                    cli = cli_outcome(retry)
                    # The try that failed may have committed before its
                    # anchor failed: then the retry replays its acceptance.
                    if cli.result == "replayed":
                        cli.result = "accepted"
                    with lock:
                        token_retries[0] += 1
                outcomes = {"cli": (cli, hc), "http": (web, hh)}
                acc = [k for k, (o, _) in outcomes.items() if o.result == "accepted"]
                if len(acc) != 1:
                    failures.append((stream, seq, cli, web))
                    return
                winner = acc[0]
                loser = "http" if winner == "cli" else "cli"
                lo, lh = outcomes[loser]
                ev = json.loads(lo.body) if lo.result == "fork_evidence" else None
                if not ev or ev["statement"]["reason"] != "conflicting_checkpoint" or \
                        ev["statement"]["accepted_checkpoint"]["checkpoint_hash"] != \
                        outcomes[winner][1] or \
                        ev["statement"]["submitted_checkpoint"]["checkpoint_hash"] != lh:
                    failures.append((stream, seq, cli, web))
                    return
                with lock:
                    winners[(stream, seq)] = (outcomes[winner][1], outcomes[winner][0].body, lo.body)
                    wins[winner] += 1
                prev = outcomes[winner][1]
        finally:
            conn.close()

    threads = [threading.Thread(target=compete, args=(s,)) for s in STREAMS]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        assert srv.stop() == 0, srv.read_log()
    assert not failures, failures[:3]
    print(f"submissions retried after a token error or a transient refusal: {token_retries[0]}")
    assert len(winners) == SEQS * len(STREAMS)
    # Both doors won some rounds: the two really raced.
    assert wins["cli"] > 0 and wins["http"] > 0, wins

    stored = stored_receipts(vault)
    snap = snapshot(vault)
    for (stream, seq), (whash, wbody, lbody) in winners.items():
        # The database holds exactly the winner, byte for byte as answered.
        assert stored[(T, stream, seq)] == (whash, wbody[:-1])
        verify_document(wbody, pk)
        verify_document(lbody, pk)
    rows = [r for r in snap["checkpoints"] if r[2] in STREAMS]
    assert len(rows) == SEQS * len(STREAMS)          # one row per (stream, seq), nothing else
    heads = {r[2]: r[3] for r in snap["heads"] if r[2] in STREAMS}
    assert heads == {s: SEQS - 1 for s in STREAMS}
    assert len([r for r in snap["fork_evidence"] if r[3] in STREAMS]) == SEQS * len(STREAMS)
