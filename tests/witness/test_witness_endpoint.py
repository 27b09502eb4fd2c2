# SPDX-License-Identifier: Apache-2.0
"""witness-serve beyond the decision table: identity, health, metrics, the
per-tenant rate limit, 503 while the token is unavailable (and recovery
without a restart), concurrency, keep-alive and a graceful stop."""
import http.client
import json
import os
import re
import threading
import time

import pytest

from lvtest import run
from witnesslib import (DbView, Server, Vault, cli_args, h, public_key_hex, request_body,
                        snapshot, verify_document, volume_env)

T, S = "ten_1", "str_1"


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """One provisioned token for the module; each test has its own database."""
    v = Vault(tmp_path_factory.mktemp("endpoint"))
    v.pk = public_key_hex(v)
    return v


@pytest.fixture
def vault(token, request):
    return DbView(token, request.node.name)


def test_identity_health_and_metrics(vault, token):
    srv = Server(vault)
    try:
        status, _, body = srv.request("GET", "/v1/witness/identity")
        assert status == 200
        ident = json.loads(body)
        pk = json.loads(vault.run(["public-key", "--format", "json"], check=0).stdout)
        assert ident["witness_id"] == "inst-test"
        assert ident["public_key"]["public_key_hex"] == token.pk
        assert ident["public_key"]["kid"] == pk["kid"]
        assert ident["receipt_domain"] == "attesto.local-vault.witness-receipt.v1"
        assert ident["fork_evidence_domain"] == "attesto.local-vault.fork-evidence.v1"
        assert srv.request("GET", "/healthz")[0] == 200

        assert srv.post(request_body(T, S, "c0", 0, h(0)))[0] == 200
        assert srv.post(request_body(T, S, "c0", 0, h(0)))[0] == 200          # replayed
        assert srv.post(request_body(T, S, "c1", 1, h(1), h(0)))[0] == 200
        assert srv.post(request_body(T, S, "cx", 1, h("x"), h(0)))[0] == 409  # conflicting
        assert srv.post(request_body(T, S, "c1", 0, h(0)))[0] == 409          # stale
        assert srv.post(request_body(T, S, "c9", 9, h(9), h(8)))[0] == 422
        assert srv.post(request_body(T, S, "c9", -9, h(9), h(8)))[0] == 400

        status, headers, body = srv.request("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        metrics = dict(re.findall(r"^(attesto_\S+) (\d+)$", text, re.M))
        assert metrics['attesto_witness_decisions_total{result="accepted"}'] == "2"
        assert metrics['attesto_witness_decisions_total{result="replayed"}'] == "1"
        assert metrics['attesto_witness_decisions_total{result="fork_evidence"}'] == "2"
        assert metrics['attesto_witness_decisions_total{result="checkpoint_gap"}'] == "1"
        assert metrics['attesto_witness_fork_evidence_total{reason="conflicting_checkpoint"}'] == "1"
        assert metrics['attesto_witness_fork_evidence_total{reason="stale_checkpoint"}'] == "1"
        assert metrics['attesto_witness_http_requests_total{code="200"}'] == "5"
        assert metrics['attesto_witness_http_requests_total{code="409"}'] == "2"
        assert metrics['attesto_witness_http_requests_total{code="422"}'] == "1"
        assert metrics['attesto_witness_http_requests_total{code="400"}'] == "1"
        assert metrics["attesto_witness_token_up"] == "1"
        assert "# TYPE attesto_witness_decisions_total counter" in text
    finally:
        assert srv.stop() == 0


def test_rate_limit_is_per_tenant_and_stores_nothing(vault, token):
    srv = Server(vault, ["--rate-limit", "1", "--rate-burst", "2"])
    try:
        assert srv.post(request_body(T, S, "c0", 0, h(0)))[0] == 200
        assert srv.post(request_body(T, S, "c1", 1, h(1), h(0)))[0] == 200
        before = snapshot(vault)
        status, headers, body = srv.post(request_body(T, S, "c2", 2, h(2), h(1)))
        assert status == 429, body
        assert int(headers["retry-after"]) >= 1
        err = json.loads(body)
        assert err["error"] == "rate_limited" and "tenant_id ten_1" in err["message"]
        assert snapshot(vault) == before
        # Another tenant has its own bucket.
        assert srv.post(request_body("ten_2", S, "c0", 0, h(0)))[0] == 200
        # The bucket refills at the configured rate.
        time.sleep(1.1)
        assert srv.post(request_body(T, S, "c2", 2, h(2), h(1)))[0] == 200
    finally:
        assert srv.stop() == 0


def test_token_unavailable_gives_503_but_stored_receipts_still_replay(vault, token):
    first = vault.run(cli_args(T, S, "c0", 0, h(0)), check=0)
    env = dict(vault.env,
               ATTESTO_LOCAL_VAULT_SIGNING_KEY="pkcs11:token=attesto;object=missing;type=private")
    srv = Server(vault, env=env)
    try:
        before = snapshot(vault)
        status, headers, body = srv.post(request_body(T, S, "c1", 1, h(1), h(0)))
        assert status == 503, body
        err = json.loads(body)
        assert err["error"] == "token_unavailable" and "missing" in err["message"]
        assert headers["retry-after"]
        assert snapshot(vault) == before
        # A replay needs no signature: the stored bytes are still served.
        status, headers, body = srv.post(request_body(T, S, "c0", 0, h(0)))
        assert status == 200 and body == first.stdout.encode()
        assert headers["attesto-witness-result"] == "replayed"
        assert srv.request("GET", "/healthz")[0] == 503
        assert srv.request("GET", "/v1/witness/identity")[0] == 503
    finally:
        assert srv.stop() == 0


def test_endpoint_recovers_when_the_key_appears_without_restart(tmp_path):
    vault = Vault(tmp_path, keys=False)
    srv = Server(vault)
    try:
        status, _, body = srv.post(request_body(T, S, "c0", 0, h(0)))
        assert status == 503, body
        assert snapshot(vault)["checkpoints"] == []
        run(["keys", "init"], env=vault.env, check=0)
        deadline = time.time() + 15
        while time.time() < deadline:
            status, _, body = srv.post(request_body(T, S, "c0", 0, h(0)))
            if status != 503:
                break
            time.sleep(0.5)
        assert status == 200, body
        verify_document(body, public_key_hex(vault))
    finally:
        assert srv.stop() == 0


def test_rejected_pin_keeps_serving_with_503_token_pin_refused(tmp_path):
    # An exit would only be restarted into another C_Login with the same
    # PIN (socket activation); the process stays up and says why it cannot sign.
    vault = Vault(tmp_path, keys=False)
    bad = os.path.join(vault.dir, "wrong-pin")
    with open(bad, "w") as f:
        f.write("00000000\n")
    env = dict(vault.env, ATTESTO_LOCAL_VAULT_PIN_FILE=bad)
    srv = Server(vault, env=env)
    try:
        status, _, body = srv.post(request_body(T, S, "c0", 0, h(0)))
        assert status == 503, body
        assert json.loads(body)["error"] == "token_pin_refused", body
        status, _, body = srv.request("GET", "/healthz")
        assert status == 503 and json.loads(body)["token"] == "pin_refused", body
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0
    assert "PIN" in srv.read_log()


def test_concurrent_clients_on_keep_alive_connections(vault, token):
    srv = Server(vault, ["--threads", "4", "--rate-limit", "0"], env=volume_env(vault.env))
    errors = []

    def client(n):
        c = srv.connection()
        prev = None
        try:
            for seq in range(25):
                st, _, body = srv.post(request_body(T, f"str_{n}", f"c{seq}", seq, h(n, seq), prev),
                                       conn=c)
                if st != 200:
                    errors.append((n, seq, st, body))
                    return
                prev = h(n, seq)
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        snap = snapshot(vault)
        assert len(snap["checkpoints"]) == 8 * 25 and len(snap["heads"]) == 8
        assert all(row[3] == 24 for row in snap["heads"])
    finally:
        assert srv.stop() == 0


def test_sigterm_stops_gracefully(vault, token):
    srv = Server(vault)
    assert srv.post(request_body(T, S, "c0", 0, h(0)))[0] == 200
    t0 = time.time()
    assert srv.stop(sig=15) == 0
    assert time.time() - t0 < 10
    assert "SIGTERM: stopping" in srv.read_log()


def test_serve_needs_a_socket_and_a_witness_id(tmp_path):
    vault = Vault(tmp_path, keys=False)
    p = vault.run(["witness-serve"], check=2)
    assert "no sockets" in p.stderr
    env = dict(vault.env)
    del env["ATTESTO_LOCAL_VAULT_INSTALLATION_ID"]
    p = run(["witness-serve", "--listen", "127.0.0.1:1"], env=env, check=2)
    assert "--witness-id: required" in p.stderr
    p = vault.run(["witness-serve", "--listen", "nonsense"], check=2)
    assert "--listen nonsense" in p.stderr
    p = vault.run(["witness-serve", "--threads", "0", "--listen", "127.0.0.1:1"], check=2)
    assert "--threads" in p.stderr
