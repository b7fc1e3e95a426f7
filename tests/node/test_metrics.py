"""Tests for twistkv.node.metrics: the node's counters behind INFO and /metrics."""

import pytest

from twistkv.node.metrics import LATENCY_BUCKETS, NodeStats


def test_resetstat_zeroes_counters_that_open_connections_keep_counting_into() -> None:
    """CONFIG RESETSTAT zeroes a command's stat in place: a connection that cached the stat
    object before the reset is still counted afterwards (it used to count into an orphan)."""
    stats = NodeStats()
    held = stats.command("GET")  # what a connection caches on its first GET
    held.observe(0.0002)
    stats.keyspace_hits = 3
    stats.reset()
    assert stats.commands_total() == 0 and stats.keyspace_hits == 0
    assert held.buckets == [0] * (len(LATENCY_BUCKETS) + 1)
    held.observe(0.0002)
    assert stats.command("GET") is held
    assert stats.commands_total() == 1


def test_quantile_is_the_upper_bound_of_the_bucket_holding_the_rank() -> None:
    """p50 and p99 come from the latency buckets: 99 fast calls and one slow one give a
    p50 in the fast bucket and a p99 that is still fast, p100 the slow bucket."""
    stat = NodeStats().command("SET")
    for _ in range(99):
        stat.observe(0.00004)
    stat.observe(0.2)
    assert stat.quantile(0.5) == LATENCY_BUCKETS[0]
    assert stat.quantile(0.99) == LATENCY_BUCKETS[0]
    assert stat.quantile(1.0) == 0.25


def test_observe_many_counts_each_command_of_a_run_in_its_bucket() -> None:
    """A run of n commands counts n calls, n times the per-command time, all n in the
    bucket of that time: the same as n single observations of it."""
    stats = NodeStats()
    run = stats.command("SET")
    single = stats.command("GET")
    run.observe_many(16, 0.0003)
    for _ in range(16):
        single.observe(0.0003)
    assert (run.calls, run.buckets) == (single.calls, single.buckets)
    assert run.seconds == pytest.approx(single.seconds)
    assert run.buckets[LATENCY_BUCKETS.index(0.0005)] == 16
