# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the observability tests: the relay tests' PKI and reference
receiver (tests/relay/relaylib.py), a fresh token per test."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "relay"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "witness"))

from relayfixtures import pki, receiver, vault  # noqa: E402,F401
