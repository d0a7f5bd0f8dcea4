"""Test support: isolated namespaces and a launcher for the real processes."""
