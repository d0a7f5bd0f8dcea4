"""Test support: namespaces, processes and the API client (from chat_devtools), and test-only helpers."""
