"""msession: one node (store, expiry, locks, commands, server)."""
