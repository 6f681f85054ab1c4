"""Crash safety: SIGKILL anywhere while fetching, optimizing or committing leaves the complete entry or none,
the next run completes it with the same weights, and what the killed run left in `.tmp/` and `.trash/`
goes with the next commit or `prune`.

The harness is tests/crash_harness.py; this runs one point of each phase, `scripts/stress.py` runs every
point in `crash_harness.POINTS`.
"""

from __future__ import annotations

import threading

import pytest
from crash_harness import POINTS, ForkServer, crash_and_recover, leftovers, make_reference, publish_repos

from pdo_hub.cache import OptimizedCache
from pdo_hub.cache._tmp import TempFolder

# One point per phase: fetch, optimize, save, manifest, rename, after the commit, quarantine, eviction.
CI_POINTS = ["fetch.small_files", "optimize.method_applied", "storage.weights_written", "commit.manifest_written",
             "place.renamed", "flow.committed", "quarantine.moving", "discard.renamed"]


def test_the_harness_covers_at_least_20_points_of_every_phase():
    assert len(POINTS) >= 20 and set(CI_POINTS) <= set(POINTS)
    phases = {name.split(".")[0] for name in POINTS}
    assert {"fetch", "optimize", "storage", "entry", "commit", "place", "lock", "flow", "quarantine"} <= phases


@pytest.fixture(scope="module")
def fork_server(hub_server, tmp_path_factory):
    publish_repos(hub_server, tmp_path_factory.mktemp("crash_sources"))
    server = ForkServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def reference(fork_server, tmp_path_factory):
    return make_reference(fork_server, tmp_path_factory.mktemp("crash_reference"))


@pytest.mark.parametrize("point", CI_POINTS)
def test_sigkill_leaves_the_entry_complete_or_absent_and_the_next_run_completes_it(point, fork_server, reference,
                                                                                   tmp_path):
    outcome = crash_and_recover(fork_server, reference, point, tmp_path)
    assert outcome.killed and not outcome.after_kill, outcome.after_kill
    assert outcome.next_status in ("built", "hit"), outcome.next_status
    assert not outcome.after_next, outcome.after_next
    if outcome.next_status == "built":
        assert not outcome.left_by_next, f"the next commit must clear what the killed one left: {outcome.left_by_next}"
    assert not outcome.left_after_prune, outcome.left_after_prune


def test_a_temp_folder_in_use_is_never_taken_for_a_leftover(tmp_path):
    cache = OptimizedCache(tmp_path)
    cache.prune()  # creates nothing, but must not fail on a cache without .tmp/
    temp = TempFolder(tmp_path / ".tmp", "entry")
    (tmp_path / ".tmp").mkdir(parents=True, exist_ok=True)
    folder = temp.create()
    try:
        (folder / "model.safetensors").write_bytes(b"half")
        pruned = []
        thread = threading.Thread(target=lambda: pruned.append(cache.prune()))  # another thread, same process
        thread.start()
        thread.join(60)
        assert pruned == [([], [])] and folder.exists()
    finally:
        temp.close()
    assert leftovers(tmp_path) == []
