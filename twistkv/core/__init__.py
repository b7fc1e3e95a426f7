"""Sans-IO cores: pure, synchronous state machines and codecs.

Nothing here imports twisted.internet, opens files or reads the clock: time
comes in as an argument (``now``), bytes come in and decisions come out.
"""
