# SPDX-License-Identifier: Apache-2.0
"""The short (CI) form of the crash soaks in soak.py; the long form is
`tests/reliability/soak.py --long`. Each runs its time (20 s, 15 s) and on,
up to a cap, until it has done the minimum work asserted below, so a slow
build still soaks. The seed is random per run and printed (LV_SOAK_SEED
fixes it) so that a failure can be replayed."""
import json
import os

import soak


def _seed():
    s = os.environ.get("LV_SOAK_SEED")
    return int(s) if s else int.from_bytes(os.urandom(4), "big")


def test_relay_crash_soak(tmp_path):
    seed = _seed()
    print(f"relay soak seed {seed}")
    fig = soak.relay_soak(str(tmp_path), float(os.environ.get("LV_SOAK_RELAY_SECONDS", 20)), seed,
                          cap=240)
    print(json.dumps(fig))
    # The soak did what it is for: processes really died mid-work and the
    # receiver really failed requests, and items flowed through all of it.
    assert fig["enqueue_killed"] >= 3 and fig["drain_killed"] >= 3, fig
    assert fig["receiver_faults"] >= 10 and fig["token_faults"] >= 3 and fig["items"] >= 200, fig


def test_witness_crash_soak(tmp_path):
    seed = _seed()
    print(f"witness soak seed {seed}")
    fig = soak.witness_soak(str(tmp_path), float(os.environ.get("LV_SOAK_WITNESS_SECONDS", 15)),
                            seed, cap=180)
    print(json.dumps(fig))
    assert fig["cli_killed"] >= 3 and fig["server_kills"] >= 2, fig
    assert fig["accepted_checkpoints"] >= 10 and fig["fork_evidence"] >= 1, fig
