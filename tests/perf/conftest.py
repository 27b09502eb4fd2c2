# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the performance-area tests: the relay tests' PKI and
receiver helpers (tests/relay/relaylib.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "relay"))
