"""Helpers for testing MoQ applications without (or with simulated) networks: :mod:`.netsim`."""
