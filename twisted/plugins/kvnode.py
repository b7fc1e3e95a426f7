"""twistd plugin: ``twistd -n kvnode``. Wiring only; see L{twistkv.tap}.

This directory must not contain an ``__init__.py``: Twisted discovers
drop-in plugins by path, and the reactor must not be imported here.
"""

from twisted.application.service import ServiceMaker

kvnode = ServiceMaker(
    "twistkv node",
    "twistkv.tap",
    "A twistkv key-value store node (Redis protocol, HTTP API, cluster peer).",
    "kvnode",
)
