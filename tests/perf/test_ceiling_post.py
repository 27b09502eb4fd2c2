# SPDX-License-Identifier: Apache-2.0
"""The bare HTTPS POST ceiling program (bench/https_post_ceiling.c) posts
real envelopes over real TLS to the reference receiver, which accepts them,
and reports its counts; a receiver that refuses them makes it fail. A few
bodies; no timing is asserted."""
import json
import os
import subprocess

import lvtest
from relaylib import PKI, Receiver, enqueue_batch, public_key_hex, relay_env

BENCH = os.environ["LV_POST_CEILING"]


def bodies(tmp_path):
    """Envelopes the vault really relayed: the receiver's events log."""
    vault = lvtest.Vault(tmp_path / "vault")
    pki = PKI(tmp_path)
    pk = public_key_hex(vault)
    first = Receiver(tmp_path / "first", pki, register=[("inst-test", pk)])
    try:
        relay_env(vault, first, pki)
        assert enqueue_batch(vault, [(f"s{i}", f"r{i}", {"i": i}) for i in range(6)]).returncode == 0
        p = vault.run(["drain-once", "--json"], check=0)
        assert json.loads(p.stdout)["delivered"] == 6
    finally:
        first.stop()
    return pki, pk, first.events_log


def post(pki, receiver, log, concurrency):
    return subprocess.run([BENCH, "--url", receiver.events_url(), "--ca-file", pki.ca, "--bodies",
                           log, "--concurrency", str(concurrency)], capture_output=True, text=True,
                          timeout=120)


def test_posts_every_body_and_the_receiver_accepts_them(tmp_path):
    pki, pk, log = bodies(tmp_path)
    fresh = Receiver(tmp_path / "fresh", pki, register=[("inst-test", pk)])
    try:
        p = post(pki, fresh, log, 4)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["requests"] == 6 and out["ok"] == 6 and out["concurrency"] == 4
        assert len(fresh.events()) == 6
    finally:
        fresh.stop()


def test_refused_bodies_fail_the_run(tmp_path):
    pki, _, log = bodies(tmp_path)
    stranger = Receiver(tmp_path / "stranger", pki, register=[])  # knows no installation
    try:
        p = post(pki, stranger, log, 2)
        assert p.returncode == 1
        assert json.loads(p.stdout)["ok"] == 0
    finally:
        stranger.stop()
