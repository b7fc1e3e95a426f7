"""Integration tests: real twistd kvnode processes (see conftest.py)."""
