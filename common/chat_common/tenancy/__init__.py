"""Tenants (applications): their lifecycle, shared by the API and the operator, and their tokens at rest."""
