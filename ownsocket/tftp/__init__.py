"""
Read-only TFTP server (RFC 1350, 2347, 2348, 2349, 7440) on Twisted.

  - L{wire}: packets to bytes and back, and backend errors to TFTP codes;
  - L{options}: option negotiation (out-of-range values are left out of the
    OACK, never clamped up);
  - L{netascii}: on-the-fly netascii (such transfers offer no tsize);
  - L{session}: one transfer as a sans-I/O state machine;
  - L{protocol}: the thin DatagramProtocols (request port, transfer port);
  - L{transport}: the interfaces between a transfer's protocol and its port;
  - L{fastport}: lean transfer ports for reactors that watch descriptors;
  - L{reactorhold}: the one, feature-detected, look inside the epoll reactor;
  - L{server}: admission, waiting, eviction of silent transfers, events and
    the log line;
  - L{service}: the Twisted service (binds in privilegedStartService).
"""
