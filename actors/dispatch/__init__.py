"""The Dispatcher and what it decides with: the waiting order, slots, attempts, retries, pauses."""
