"""The chat-system operator: ``Application`` custom resources provisioned as tenants by kopf handlers."""
