"""Code every chat-system service shares: settings, tables, queue contracts, Redis keys, metrics.

Services depend on this package and never on each other.
"""
