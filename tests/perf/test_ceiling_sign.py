# SPDX-License-Identifier: Apache-2.0
"""The bare C_Sign ceiling program (bench/token_sign_rate.c) signs on a
real token and reports its counts; bad arguments are refused. Tiny
durations; no timing is asserted."""
import json
import os
import subprocess

import lvtest

BENCH = os.environ["LV_BENCH_SIGN"]


def test_signs_on_the_token_and_reports_json(tmp_path):
    vault = lvtest.Vault(tmp_path)
    e = vault.env
    p = subprocess.run([BENCH, e["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"], "attesto", "lv-signing",
                        e["ATTESTO_LOCAL_VAULT_PIN_FILE"], "0.2", "400"], env=e,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["signatures"] >= 1 and out["token_sign_per_s"] > 0 and out["msg_bytes"] == 400


def test_a_missing_key_is_an_error(tmp_path):
    vault = lvtest.Vault(tmp_path)
    e = vault.env
    p = subprocess.run([BENCH, e["ATTESTO_LOCAL_VAULT_PKCS11_MODULE"], "attesto", "no-such-key",
                        e["ATTESTO_LOCAL_VAULT_PIN_FILE"], "0.2"], env=e, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and "no private key labelled no-such-key" in p.stderr


def test_bad_arguments_exit_2():
    p = subprocess.run([BENCH, "x"], capture_output=True, text=True)
    assert p.returncode == 2 and "usage" in p.stderr
