"""msession: the wire protocol, its codec and clients."""
