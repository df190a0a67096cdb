"""The shared PostgreSQL store: schema, claims and leases, fencing, events, wake-ups."""
