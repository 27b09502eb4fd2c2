# SPDX-License-Identifier: Apache-2.0
"""The man page covers every verb, global option, environment variable and
exit code the binary knows, and formats without warnings."""
import os
import re
import subprocess

import lvtest

MAN = os.path.join(lvtest.SOURCE_DIR, "docs", "attesto-local-vault.1")


def man_text():
    # groff escapes hyphens in options (\-\-spool\-db); compare on plain text.
    return open(MAN).read().replace("\\-", "-").replace("\\(em", "-")


def test_every_verb_of_the_verb_table_is_documented():
    main = open(os.path.join(lvtest.SOURCE_DIR, "src", "main.c")).read()
    table = main[main.index("static const Verb verbs[]"):]
    table = table[:table.index("};")]
    verbs = re.findall(r'^\s*\{"([a-z0-9-]+)",', table, re.M)
    assert len(verbs) >= 10
    text = man_text()
    for verb in verbs:
        assert re.search(rf'^\.SS "?{re.escape(verb)}\b', text, re.M), f"verb {verb} has no .SS section"


def test_every_global_option_and_its_variable_is_documented():
    config = open(os.path.join(lvtest.SOURCE_DIR, "src", "config.c")).read()
    options = re.findall(r'OPT\("([a-z0-9-]+)", "([A-Z0-9_]+)"', config)
    assert len(options) >= 10
    text = man_text()
    for flag, env in options:
        assert f"--{flag}" in text, flag
        assert f"ATTESTO_LOCAL_VAULT_{env}" in text, env
    for flag in ("--json", "--version", "--help"):
        assert flag in text


def verb_section(text, verb):
    """The text of a verb's .SS section, up to the next .SS or .SH."""
    m = re.search(rf'^\.SS "?{re.escape(verb)}\b', text, re.M)
    assert m, f"verb {verb} has no .SS section"
    end = re.search(r"^\.S[SH] ", text[m.end():], re.M)
    return text[m.start():m.end() + (end.start() if end else len(text))]


def test_every_option_of_a_verbs_usage_is_in_its_section():
    """What `VERB --help` names, the verb's own section documents (global
    options mentioned in a usage's prose are covered by the test above)."""
    main = open(os.path.join(lvtest.SOURCE_DIR, "src", "main.c")).read()
    table = main[main.index("static const Verb verbs[]"):]
    verbs = re.findall(r'^\s*\{"([a-z0-9-]+)",', table[:table.index("};")], re.M)
    config = open(os.path.join(lvtest.SOURCE_DIR, "src", "config.c")).read()
    globals_ = {"--" + o for o in re.findall(r'OPT\("([a-z0-9-]+)"', config)}
    text = man_text()
    missing = []
    for verb in verbs:
        p = lvtest.run([verb, "--help"], check=0)
        section = verb_section(text, verb)
        if verb == "drain-loop":  # its "drain options" are drain-once's
            section += verb_section(text, "drain-once")
        for opt in sorted(set(re.findall(r"(--[a-z][a-z-]*)", p.stdout)) - {"--help"} - globals_):
            if not re.search(rf"{re.escape(opt)}\b", section):
                missing.append(f"{verb} {opt}")
    assert not missing, f"options in a verb's usage but not in its man page section: {missing}"


def test_every_exit_code_is_documented():
    lv_h = open(os.path.join(lvtest.SOURCE_DIR, "include", "lv.h")).read()
    codes = sorted(set(int(c) for c in re.findall(r"LV_EXIT_\w+ = (\d+)", lv_h)))
    text = man_text()
    section = text[text.index(".SH EXIT STATUS"):]
    section = section[:section.index("\n.SH", 1)]
    for c in codes:
        assert re.search(rf"^\.TP\n\.B {c}$", section, re.M), f"exit code {c}"


def test_formats_without_warnings():
    p = subprocess.run(["groff", "-man", "-ww", "-z", "-t", MAN], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    p = subprocess.run(["man", "--warnings", "-l", MAN], capture_output=True, text=True,
                       env=dict(os.environ, MANWIDTH="80"))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    rendered = re.sub(".\x08", "", p.stdout)  # overstrike bold and underline
    assert "drain-loop" in rendered and "EXIT STATUS" in rendered
