# The twistd dropin: `twistd ownsocket`.  No __init__.py may ever sit beside
# this file; twisted/plugins is Twisted's own namespace package.
from twisted.application.service import ServiceMaker

ownsocket = ServiceMaker(
    "ownsocket",
    "ownsocket.tap",
    "Network-boot server: DHCP/BOOTP, TFTP and HTTP for BIOS and UEFI fleets",
    "ownsocket",
)
