"""Plumbing every part uses: clocks and timers, thread tracking, logs, metrics, snapshots."""
