"""DHCPv6 (RFC 8415) and Router Advertisements for IPv6 network boot."""
