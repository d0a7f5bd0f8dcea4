"""The webhook dispatcher: delivers each tenant's event log to its webhook endpoints, signed (docs/webhooks.md)."""
