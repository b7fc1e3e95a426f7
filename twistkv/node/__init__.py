"""Twisted adapters: protocols, services and timers around the sans-IO cores."""
