"""Boot-file selection: what a network-booting client should load."""
