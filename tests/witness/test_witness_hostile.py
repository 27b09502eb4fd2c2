# SPDX-License-Identifier: Apache-2.0
"""Hostile clients do not take witness-serve away (issue 14 item 3): with
1,000 idle and 300 slowloris connections held open on loopback TCP and on
the unix socket (each closed one reopened at once), a well-behaved client's
requests all succeed with p99 under 1 s; the slowloris connections are
closed by the whole-request deadline although they send a byte every
0.4 s; a TCP peer gets no more connections than the per-peer limit; the
drops are counted in /metrics and summarized, not logged one by one."""
import hashlib
import http.client
import json
import multiprocessing
import os
import re
import resource
import select
import selectors
import socket
import time

import pytest

from witnesslib import ASAN, Server, UnixHTTPConnection, Vault, h, request_body

IDLE, SLOW = 1000, 300      # the figures
PER_PEER = 16
DEADLINE_S = 3              # --request-timeout of the runs
HOLD_S = 8                  # how long the attack is held while the good client measures
BYTE_EVERY_S = 0.4          # slowloris: one header byte this often
PACE_S = 0.02               # the good client's pause between requests
REOPEN_PER_S = 500          # the attack reopens closed connections at most this fast
# The bound. The ASan build (instrumented, and run beside the rest
# of the suite) gets twice that: it checks memory, the plain build checks
# the figure (it measures p99 well under 100 ms; docs/witness.md).
P99_MAX_S = 2.0 if ASAN else 1.0
SLOW_HEAD = b"POST /v1/witness/checkpoints HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000


def setup_module():
    """1,300 attack sockets plus the good client's need more than the usual
    1,024 descriptors: raise the soft limit (witness-serve inherits it and
    raises its own as needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert soft == resource.RLIM_INFINITY or soft >= IDLE + SLOW + 200, \
        f"RLIMIT_NOFILE {soft}: too low for {IDLE}+{SLOW} connections"


@pytest.fixture(scope="module")
def vault(tmp_path_factory):
    return Vault(tmp_path_factory.mktemp("hostile"))


class Attack:
    """IDLE connections that send nothing and SLOW ones that send one byte
    of a never-ending header at a time, each reopened when the server
    closes it (at most REOPEN_PER_S a second: bounded, as the issue asks;
    a reconnect flood is another attack). connect() makes a socket (for
    TCP, from a source address of its own so that the per-peer limit is
    not what stops them)."""

    def __init__(self, connect):
        self.connect = connect
        self.sel = selectors.DefaultSelector()
        ctx = multiprocessing.get_context("fork")
        self.ctx = ctx
        self.stop_ev = ctx.Event()
        self.ready = ctx.Event()
        self.slow_closed = []   # (seconds open, bytes sent) of each slowloris closed by the server
        self.idle_closed = 0
        self.errors = 0
        self.open_count = {"idle": 0, "slow": 0}
        self.reopen = []

    def open(self, kind, i):
        try:
            s = self.connect(kind, i)
        except OSError:
            self.errors += 1
            return
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, {"kind": kind, "i": i, "t0": time.monotonic(),
                                                    "sent": 0})
        self.open_count[kind] += 1

    def closed(self, key):
        d = key.data
        self.sel.unregister(key.fileobj)
        key.fileobj.close()
        self.open_count[d["kind"]] -= 1
        if d["kind"] == "slow":
            self.slow_closed.append((time.monotonic() - d["t0"], d["sent"]))
        else:
            self.idle_closed += 1
        self.reopen.append((d["kind"], d["i"]))

    def run(self):
        for i in range(IDLE):
            self.open("idle", i)
        for i in range(SLOW):
            self.open("slow", i)
        self.ready.set()
        next_byte = last = time.monotonic()
        budget = 0.0
        while not self.stop_ev.is_set():
            now = time.monotonic()
            budget = min(REOPEN_PER_S, budget + (now - last) * REOPEN_PER_S)
            last = now
            while self.reopen and budget >= 1:
                self.open(*self.reopen.pop(0))
                budget -= 1
            for key, _ in self.sel.select(timeout=0.05):
                try:
                    data = key.fileobj.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.closed(key)
            if time.monotonic() >= next_byte:
                next_byte += BYTE_EVERY_S
                for key in list(self.sel.get_map().values()):
                    d = key.data
                    if d["kind"] == "slow" and d["sent"] < len(SLOW_HEAD):
                        try:
                            key.fileobj.send(SLOW_HEAD[d["sent"]:d["sent"] + 1])
                            d["sent"] += 1
                        except OSError:
                            pass  # seen as closed by the next select
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()

    def child(self, pipe):
        self.run()
        pipe.send({"slow_closed": self.slow_closed, "idle_closed": self.idle_closed,
                   "errors": self.errors, "open_count": self.open_count})
        pipe.close()

    # The attack runs in a process of its own: the good client's latencies
    # are the server's, not the wait for this interpreter's lock.
    def __enter__(self):
        self.pipe, child_end = self.ctx.Pipe(duplex=False)
        self.proc = self.ctx.Process(target=self.child, args=(child_end,), daemon=True)
        self.proc.start()
        child_end.close()
        assert self.ready.wait(60), "attack connections not opened in 60 s"
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        if self.pipe.poll(30):
            self.__dict__.update(self.pipe.recv())
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


def good_client(new_conn, seconds, stream, auth=None):
    """Sequential requests on fresh connections for `seconds`, paced under
    the per-tenant rate limit: checkpoints that extend one stream, health
    checks and identity reads. Returns the (status, latency) of each."""
    out, seq, prev = [], 0, None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kind = len(out) % 3
        t0 = time.monotonic()
        c = new_conn()
        try:
            if kind == 0:
                body = json.dumps(request_body("ten_h", stream, f"c{seq}", seq, h(seq), prev))
                hdrs = {"Content-Type": "application/json"}
                if auth:
                    hdrs["Authorization"] = "Bearer " + auth
                c.request("POST", "/v1/witness/checkpoints", body, hdrs)
            else:
                c.request("GET", "/healthz" if kind == 1 else "/v1/witness/identity")
            r = c.getresponse()
            r.read()
            status = r.status
        except OSError as e:
            status = repr(e)
        finally:
            c.close()
        out.append((status, time.monotonic() - t0))
        if kind == 0 and status == 200:
            prev, seq = h(seq), seq + 1
        time.sleep(PACE_S)
    return out


def p99(latencies):
    s = sorted(latencies)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def metrics(srv):
    status, _, body = srv.request("GET", "/metrics")
    assert status == 200
    return {k: int(v) for k, v in re.findall(r"^(attesto_\S+) (\d+)$", body.decode(), re.M)}


def drops(m, reason):
    return m[f'attesto_witness_connections_dropped_total{{reason="{reason}"}}']


def check_run(name, srv, attack, results, m):
    statuses = [s for s, _ in results]
    lat = [t for _, t in results]
    figures = (f"{name}: {len(results)} good requests, p99 {p99(lat) * 1000:.0f} ms, max "
               f"{max(lat) * 1000:.0f} ms; attack held {attack.open_count}, reopened "
               f"{attack.idle_closed} idle and {len(attack.slow_closed)} slowloris (open "
               f"{min(t for t, _ in attack.slow_closed or [(0, 0)]):.2f}-"
               f"{max(t for t, _ in attack.slow_closed or [(0, 0)]):.2f} s, up to "
               f"{max(n for _, n in attack.slow_closed or [(0, 0)])} bytes sent); drops "
               f"deadline {drops(m, 'request_deadline')} peer {drops(m, 'peer_limit')} "
               f"evicted {drops(m, 'connection_limit')}")
    print(figures)
    with open(os.path.join(srv.vault.dir, "figures.txt"), "a") as f:
        f.write(figures + "\n")
    assert len(results) >= 30, figures
    assert all(s == 200 for s in statuses), [s for s in statuses if s != 200][:5]
    assert p99(lat) < P99_MAX_S, figures
    # Every slowloris connection the server closed was closed by the
    # deadline (or made room at the connection limit): none outlived it,
    # though each sent a byte every 0.4 s all along.
    assert len(attack.slow_closed) >= SLOW, figures
    assert max(t for t, _ in attack.slow_closed) < DEADLINE_S + 1.5, figures
    # Counted, not logged one by one.
    log = srv.read_log()
    assert len(log.splitlines()) < 40, log[-3000:]
    assert "connections dropped since the last such line" in log, log[-3000:]


def test_tcp_idle_and_slowloris_keep_the_endpoint_and_the_per_peer_limit_holds(vault):
    # 1,300 fit under the default --max-connections (2,048): what closes
    # them is the deadline.
    # TCP callers submit only with a tenants file (docs/witness.md
    # "Tenants"): the good client is tenant ten_h by its bearer secret.
    secret = "hostile-test-secret"
    tenants = os.path.join(vault.dir, "tenants-hostile")
    with open(tenants, "w") as f:
        f.write(f"tenant ten_h bearer-sha256={hashlib.sha256(secret.encode()).hexdigest()}\n")
    os.chmod(tenants, 0o600)
    env = dict(vault.env, ATTESTO_LOCAL_VAULT_WITNESS_TENANTS=tenants)
    srv = Server(vault, ["--request-timeout", str(DEADLINE_S),
                         "--max-connections-per-peer", str(PER_PEER)], env=env)
    try:
        # One peer opens 3x its limit: the excess is closed at once.
        held = []
        for _ in range(3 * PER_PEER):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", srv.port))
            held.append(s)
        time.sleep(0.5)   # well inside the deadline: only refused ones are closed
        refused = 0
        for s in select.select(held, [], [], 0)[0]:
            try:
                refused += s.recv(1) == b""
            except OSError:
                refused += 1
        for s in held:
            s.close()
        assert refused == 2 * PER_PEER, (refused, srv.read_log())
        assert drops(metrics(srv), "peer_limit") == 2 * PER_PEER

        def connect(kind, i):
            # 10 per source address, under the per-peer limit.
            base = 10 if kind == "idle" else 10 + IDLE // 10
            s = socket.socket()
            s.bind((f"127.0.{(base + i // 10) // 250}.{(base + i // 10) % 250 + 2}", 0))
            s.connect(("127.0.0.1", srv.port))
            return s

        with Attack(connect) as attack:
            results = good_client(
                lambda: http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10), HOLD_S, "tcp",
                auth=secret)
        m = metrics(srv)
        check_run("tcp", srv, attack, results, m)
        assert attack.errors == 0
        # Not one slowloris was closed before its deadline (nothing evicted).
        assert min(t for t, _ in attack.slow_closed) >= DEADLINE_S - 0.5
        assert drops(m, "request_deadline") >= IDLE + SLOW
        assert drops(m, "connection_limit") == 0
    finally:
        assert srv.stop() == 0, srv.read_log()[-3000:]


@pytest.mark.parametrize("limit", [None, 1024])
def test_unix_socket_idle_and_slowloris_keep_the_endpoint(vault, limit):
    """With the default --max-connections (2,048) the 1,300 fit and the
    deadline closes them; with 1,024 (below 1,300) each newcomer past 7/8
    of it evicts the oldest unfinished request, so the good client still
    gets in although the attack holds the socket full."""
    path = os.path.join(vault.dir, f"hostile-{limit}.sock")
    extra = ["--max-connections", str(limit)] if limit else []
    srv = Server(vault, ["--listen", f"unix:{path}", "--request-timeout", str(DEADLINE_S)] + extra)
    try:
        def connect(kind, i):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s

        with Attack(connect) as attack:
            results = good_client(lambda: UnixHTTPConnection(path, timeout=10), HOLD_S,
                                  f"unix-{limit}")
        m = metrics(srv)
        check_run(f"unix, --max-connections {limit or 'default'}", srv, attack, results, m)
        assert attack.errors == 0
        assert drops(m, "peer_limit") == 0
        if not limit:
            assert min(t for t, _ in attack.slow_closed) >= DEADLINE_S - 0.5
            assert drops(m, "request_deadline") >= IDLE + SLOW
            assert drops(m, "connection_limit") == 0
        else:
            assert drops(m, "connection_limit") > 0
    finally:
        assert srv.stop() == 0, srv.read_log()[-3000:]


def test_limits_are_checked(vault):
    from lvtest import run
    for args, msg in [
        (["--request-timeout", "0"], "--request-timeout: 0: must be an integer from 1 to 3600"),
        (["--max-connections", "8"], "--max-connections: 8: must be an integer from 16 to 65536"),
        (["--max-connections-per-peer", "x"], "--max-connections-per-peer: x: must be an integer"),
        (["--max-connections", "100", "--max-connections-per-peer", "200"],
         "--max-connections-per-peer: 200: must not exceed --max-connections (100)"),
    ]:
        p = run(["witness-serve", "--listen", "127.0.0.1:1"] + args, env=vault.env, check=2)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], p.stderr
