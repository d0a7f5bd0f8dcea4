"""The writers' runtime: the one batching consumer loop, its hooks, batches, poison isolation, routing
of finished deliveries and retry tiers, and the process wiring every writer shares."""
