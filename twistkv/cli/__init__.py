"""The C{twistkv} operator command line: data commands, cluster views, a REPL, a local
cluster launcher, a benchmark, a seed-data loader and the Kubernetes preStop hook
(docs/cli.md).

C{main(argv)} runs one command line and returns its exit code; the modules behind it
are private (C{_main}, C{_data}, C{_status}, C{_repl}, C{_cluster}, C{_bench}, C{_load},
C{_k8s}).
"""

from twistkv.cli._main import main

__all__ = ["main"]
