# SPDX-License-Identifier: Apache-2.0
"""bash completion: sourced in a clean bash, driven like readline does, and
compared with the sources: every verb of src/main.c, every global option of
src/config.c and every option a verb parses must be offered; and for each
verb (and subcommand) exactly the options of its table (src/cli/), which
its --help lists."""
import os
import re
import shlex
import subprocess

import pytest

import lvtest

SCRIPT = os.path.join(lvtest.SOURCE_DIR, "packaging", "completion", "attesto-local-vault.bash")
SRC = os.path.join(lvtest.SOURCE_DIR, "src")
CLI = os.path.join(SRC, "cli")


def complete(*words):
    """Completions for the command line `attesto-local-vault WORDS...`, the
    last word being the one under the cursor."""
    line = ["attesto-local-vault", *words]
    script = (f"source {shlex.quote(SCRIPT)}\n"
              f"COMP_WORDS=({' '.join(shlex.quote(w) for w in line)})\n"
              f"COMP_CWORD={len(line) - 1}\n"
              "_attesto_local_vault\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       text=True, timeout=30, cwd=os.path.dirname(SCRIPT))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    return sorted(l for l in p.stdout.splitlines() if l)


def source_verbs():
    with open(os.path.join(SRC, "main.c")) as f:
        return re.findall(r'\{"([a-z-]+)",\s*[a-z_]+_main,', f.read())


def source_globals():
    with open(os.path.join(SRC, "config.c")) as f:
        text = f.read()
    return ["--" + o for o in re.findall(r'OPT\("([a-z-]+)"', text)] + ["--json"]


def source_verb_options():
    """Every long option the verbs parse: the entries of their option tables
    (CLI_*_OPT in src/cli/) and any literal flag."""
    opts = set()
    for name in os.listdir(CLI):
        if not name.endswith(".c"):
            continue
        with open(os.path.join(CLI, name)) as f:
            text = f.read()
        opts |= {"--" + o for o in re.findall(r'CLI_[A-Z_]*OPT\(\s*"([a-z][a-z-]*)"', text)}
        opts |= set(re.findall(r'"(--[a-z][a-z-]*)"', text))
    return opts


def verb_options(verb):
    return complete(*verb.split(), "--")


def test_sources_are_found():
    # The parsers above must see the tables, or the checks below are empty.
    assert len(source_verbs()) >= 15 and "doctor" in source_verbs()
    assert len(source_globals()) >= 13 and "--spool-db" in source_globals()
    assert {"--stream-id", "--max-in-flight", "--checkpoint-hash"} <= source_verb_options()


def test_every_verb_of_the_table_completes():
    assert complete("") == sorted(source_verbs())


def test_verbs_complete_by_prefix():
    assert complete("dr") == ["drain-loop", "drain-once"]
    assert complete("witness-") == ["witness-checkpoint", "witness-forks", "witness-serve",
                                    "witness-state"]


def test_every_global_option_completes():
    offered = complete("--")
    for opt in source_globals():
        assert opt in offered, f"{opt} (src/config.c) is missing from the completion"
    assert "--pin" not in offered  # never on the command line


def test_every_option_a_verb_parses_is_offered_for_some_verb():
    offered = set(complete("--"))
    for verb in source_verbs():
        offered |= set(verb_options(verb))
    for sub in ("keys init", "dead-letter list", "dead-letter requeue", "spool deks",
                "spool rotate-dek", "spool rekey", "spool rewrap-kek", "receipts export",
                "witness-state show", "witness-state adopt"):
        offered |= set(verb_options(sub))
    missing = source_verb_options() - offered
    assert not missing, f"options parsed in src/cli_*.c but not completed: {sorted(missing)}"


SUBCOMMANDS = {"keys": ["init"], "dead-letter": ["list", "requeue"],
               "spool": ["deks", "rotate-dek", "rekey", "rewrap-kek"], "receipts": ["export"],
               "witness-state": ["show", "adopt"]}


@pytest.mark.parametrize("verb", source_verbs())
def test_options_in_a_verbs_usage_are_offered_for_that_verb(verb):
    """Every verb of src/main.c answers --help with its usage (exit 0), and
    every option the usage names is completed for that verb (or for one of
    its subcommands)."""
    p = lvtest.run([verb, "--help"], check=0)
    assert p.stdout.startswith("Usage: "), p.stdout
    # Global options a usage mentions in its prose are completed globally.
    usage = set(re.findall(r"(--[a-z][a-z-]*)", p.stdout)) - set(source_globals())
    offered = set(verb_options(verb)) | {"--help"}
    for sub in SUBCOMMANDS.get(verb, ()):
        offered |= set(verb_options(f"{verb} {sub}"))
    assert usage <= offered, sorted(usage - offered)


def help_options(key):
    """The options `KEY --help` lists (its table), --help included."""
    p = lvtest.run([*key.split(), "--help"], check=0)
    listed = p.stdout[p.stdout.index("Options:\n"):]
    return sorted(set(re.findall(r"^  (--[a-z][a-z-]*)", listed, re.M)))


def command_keys():
    keys = []
    for verb in source_verbs():
        subs = SUBCOMMANDS.get(verb)
        keys += [f"{verb} {s}" for s in subs] if subs else [verb]
    return keys


@pytest.mark.parametrize("key", command_keys())
def test_each_command_completes_exactly_the_options_of_its_table(key):
    """Adding an option to a verb's table shows in its --help; this test then
    asks for the same option in the completion (and for nothing else)."""
    assert verb_options(key) == help_options(key)


def test_a_verbs_options_after_globals():
    assert complete("--spool-db", "/x", "--json", "drain-once", "--max-") == \
        ["--max-attempts", "--max-in-flight"]
    assert complete("--log-level=debug", "doctor", "--") == \
        ["--connect-timeout-ms", "--help", "--json", "--timeout-ms"]


def test_subcommands_and_values():
    assert complete("keys", "") == ["init"]
    assert complete("dead-letter", "") == ["list", "requeue"]
    assert complete("dead-letter", "requeue", "--") == ["--all", "--help"]
    assert complete("spool", "") == ["deks", "rekey", "rewrap-kek", "rotate-dek"]
    assert complete("spool", "rekey", "--") == ["--batch", "--help", "--json"]
    assert complete("witness-state", "") == ["adopt", "show"]
    assert complete("witness-state", "adopt", "--") == ["--confirm", "--help"]
    assert complete("list", "--state", "d") == ["dead_letter"]
    assert complete("public-key", "--format", "") == ["hex", "json", "pem"]
    assert complete("--log-level", "") == ["debug", "error", "info", "notice", "warning"]
    assert complete("--log-level=w") == ["--log-level=warning"]
    # a value is not taken for a verb
    assert complete("--installation-id", "") == []


def test_file_values():
    here = os.path.basename(SCRIPT)
    assert here in complete("--ca-file", "attesto-")
    assert here in complete("verify", "attesto-")
