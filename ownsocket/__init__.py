"""ownsocket: a network-boot server (DHCP/BOOTP, TFTP, HTTP) on Twisted."""

__version__ = "0.1.0"
