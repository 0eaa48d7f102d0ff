"""msession clustering: sans-I/O membership (SWIM + Lifeguard) and the hash ring."""
