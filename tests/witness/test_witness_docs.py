# SPDX-License-Identifier: Apache-2.0
"""docs/witness.md stays true: its worked example is a real witness receipt
that the independent verifier accepts, with the figures the text gives, and
a forgery of it fails."""
import hashlib
import json
import os
import re

import pytest

from lvtest import SOURCE_DIR
from witnesslib import RECEIPT_DOMAIN, jcs, verify_document

DOC = os.path.join(SOURCE_DIR, "docs", "witness.md")


def example():
    text = open(DOC, encoding="utf-8").read()
    m = re.search(r"<!-- witness-example-receipt -->\n```json\n(.*?)\n```", text, re.S)
    assert m, "worked example missing from docs/witness.md"
    return text, (m.group(1) + "\n").encode()


def test_worked_example_verifies_with_the_figures_of_the_text():
    text, body = example()
    doc = verify_document(body, "b3715144750453c1ceaca11d1bad83dd1dc0f3311013a7377642dd1714027ee7")
    canonical = jcs(doc["statement"])
    assert len(canonical) == 371 and "371 bytes" in text
    assert len(RECEIPT_DOMAIN) == 38 and len(RECEIPT_DOMAIN + b"\n" + canonical) == 410
    assert "410 bytes in all" in text
    assert hashlib.sha256(canonical).hexdigest() == doc["statement_hash"]
    pk = bytes.fromhex(doc["public_key"]["public_key_hex"])
    assert doc["public_key"]["kid"] == "lv-" + hashlib.sha256(pk).hexdigest()[:16]
    assert doc["statement"]["witness_id"] == "inst-example"


def test_a_forged_worked_example_fails():
    _, body = example()
    doc = json.loads(body)
    doc["statement"]["checkpoint_seq_no"] = 43
    forged = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
    with pytest.raises(Exception):
        verify_document(forged, doc["public_key"]["public_key_hex"])
