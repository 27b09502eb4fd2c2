# SPDX-License-Identifier: Apache-2.0
"""The global CLI contract: --version, --help, unknown verbs and options,
refusal of a PIN on the command line and of raw key material."""
import re

from lvtest import run


def test_version_prints_name_and_semver():
    p = run(["--version"], check=0)
    assert re.fullmatch(r"attesto-local-vault \d+\.\d+\.\d+\n", p.stdout)


def test_help_lists_every_verb_and_exit_codes():
    p = run(["--help"], check=0)
    for verb in ["keys", "public-key", "enqueue", "status", "drain-once", "drain-loop",
                 "witness-checkpoint", "witness-serve", "verify", "doctor"]:
        assert f"  {verb} " in p.stdout
    assert "5 token or key problem" in p.stdout


def test_unknown_verb_is_usage_error():
    p = run(["frobnicate"], check=2)
    assert "frobnicate: unknown verb" in p.stderr


def test_unknown_global_option_is_usage_error():
    p = run(["--no-such-option", "x", "status"], check=2)
    assert "--no-such-option: unknown global option" in p.stderr


def test_pin_on_command_line_is_refused():
    p = run(["--pin", "1234", "status"], check=2)
    assert "never taken on the command line" in p.stderr


def test_raw_key_material_instead_of_uri_is_refused_without_echo():
    secret = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    p = run(["--signing-key", secret, "public-key"], check=2)
    assert "--signing-key: not a PKCS#11 URI" in p.stderr
    assert "pkcs11:token=" in p.stderr
    assert secret not in p.stderr and secret not in p.stdout

