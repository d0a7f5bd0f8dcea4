"""What the webhook parts of the system share: where deliveries may go (:mod:`.egress`)."""
