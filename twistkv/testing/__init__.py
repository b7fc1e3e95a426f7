"""Public test helpers: a deterministic in-process network for whole-cluster tests.

Tests of code built on twistkv (and twistkv's own cluster tests) can run many
nodes in one process on one fake clock, with seeded delays, partitions and
crashes, instead of real sockets and sleeps (Tahoe-LAFS's C{no_network} idea).
"""

from twistkv.testing.network import NetworkEvent, SimulatedNetwork, SimulatedTransport

__all__ = ["NetworkEvent", "SimulatedNetwork", "SimulatedTransport"]
