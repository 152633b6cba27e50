"""
File roots the guests boot from: the iPXE chain (first stages, boot.ipxe,
one marker script per platform) and the shim/GRUB chain (Secure Boot,
arm64), with the marker lines a guest prints to prove it ran the file meant
for it.

The flow is the usual iPXE chain: firmware -> first stage (undionly.kpxe /
snponly.efi) -> iPXE -> boot.ipxe -> marker-${platform}.ipxe, whose only job
is to print a line nobody else prints, on the guest's serial console.
"""

import os
import shutil

from tests.lab.errors import LabError

_IPXE_FILE_DIRS = ("/usr/lib/ipxe", "/usr/share/ipxe")
FIRST_STAGES = ("undionly.kpxe", "snponly.efi")

#: iPXE's ${platform} for each guest kind.
PLATFORM_OF = {"bios": "pcbios", "uefi-pxe": "efi", "uefi-http": "efi"}


def ipxe_file(name):
    """Path of an iPXE boot file from Debian's ``ipxe`` package."""
    for d in _IPXE_FILE_DIRS:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    raise LabError("%s not found in %s (install ipxe)" % (name, ", ".join(_IPXE_FILE_DIRS)))


def marker_text(platform, token):
    """The line ``marker-<platform>.ipxe`` echoes (short: SeaBIOS's serial console wraps at 80)."""
    return "OWNSOCKET-MARKER %s %s" % (platform, token)


def write_boot_root(root, token):
    """
    Fill ``root`` with the first stages, ``boot.ipxe`` and one marker script
    per platform; return ``{platform: marker text}``.

    ``root`` is made world-readable (dnsmasq's TFTP reads it too); its parent
    directories must be traversable (``chmod 755`` a ``mkdtemp`` directory).
    """
    os.makedirs(root, exist_ok=True)
    for name in FIRST_STAGES:
        shutil.copy(ipxe_file(name), os.path.join(root, name))
    with open(os.path.join(root, "boot.ipxe"), "w") as f:
        f.write("#!ipxe\n"
                "echo boot.ipxe: platform ${platform} next-server ${next-server}\n"
                # Relative to this script's own URL: under proxyDHCP
                # ${next-server} is the *address* server's siaddr (dnsmasq
                # puts its own address there), not the proxy's.
                "chain marker-${platform}.ipxe\n")
    markers = {}
    for platform in ("pcbios", "efi"):
        markers[platform] = marker_text(platform, token)
        with open(os.path.join(root, "marker-%s.ipxe" % platform), "w") as f:
            # Debian's iPXE 1.0.0 has no poweroff: sleep until the test stops QEMU.
            f.write("#!ipxe\necho %s\nsleep 600\n" % markers[platform])
    os.chmod(root, 0o755)
    return markers


# -- shim and GRUB (Secure Boot, arm64) ---------------------------------------
#
# The chain is firmware -> shim -> GRUB -> /grub/grub.cfg (one per machine)
# -> /marker-<host>[-sb], a GRUB script that echoes a line and halts.  The
# grub.cfg asks for the "-sb" marker only when GRUB sees shim_lock, i.e.
# when Secure Boot really was on (FIRMWARE-FACTS 6a).

#: Where .ci/setup.d/50-arm64-grub.sh unpacks grub-efi-arm64-signed.
ARM64_GRUB_DIR = os.environ.get("OWNSOCKET_ARM64_GRUB_DIR", "/var/lib/ownsocket-ci/grub-efi-arm64-signed")

SIGNED_FILES = {
    "shimx64.efi": ("/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
    "grubnetx64.efi": ("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", "grub-efi-amd64-signed"),
    "grubnetaa64.efi": (os.path.join(ARM64_GRUB_DIR, "usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed"),
                        "grub-efi-arm64-signed (bash .ci/setup.d/50-arm64-grub.sh)"),
}

#: The per-machine GRUB config, as an ownsocket template.
GRUB_TEMPLATE = """\
echo "grub.cfg for @hostname@ @mac@ @ip@ arch @arch@ shim_lock=$shim_lock"
set sb=
if [ "$shim_lock" = "y" ]; then set sb=-sb; fi
source /marker-@hostname@$sb
"""

#: The per-machine iPXE script, as an ownsocket template.
IPXE_TEMPLATE = """\
#!ipxe
echo boot.ipxe for @hostname@ @mac@ platform ${platform}
chain marker-@hostname@.ipxe
"""


def signed_boot_file(name):
    """Path of a signed shim/GRUB image (see :data:`SIGNED_FILES`)."""
    path, package = SIGNED_FILES[name]
    if not os.path.exists(path):
        raise LabError("%s not found (install %s)" % (path, package))
    return path


def grub_marker_text(host, secure_boot, token):
    return "OWNSOCKET-MARKER %s sb=%s %s" % (host, "yes" if secure_boot else "no", token)


def ipxe_marker_text(host, token):
    return "OWNSOCKET-MARKER %s ipxe %s" % (host, token)


def write_grub_root(root, token, hosts, arm64=True):
    """
    Fill ``root`` for shim/GRUB and iPXE machines named ``hosts``: the first
    stages, ``efi/shimx64.efi`` with ``efi/grubx64.efi`` next to it (shim
    takes the directory from the BOOTP file field, FIRMWARE-FACTS 6d),
    ``grubaa64.efi``, and for each host a GRUB marker with and without
    "-sb" and an iPXE marker.  Templates go to ``<root>/../templates``.
    Returns ``{(host, kind): marker text}`` with kind ``sb``, ``grub``, ``ipxe``.
    """
    os.makedirs(os.path.join(root, "efi"), exist_ok=True)
    for name in FIRST_STAGES:
        shutil.copy(ipxe_file(name), os.path.join(root, name))
    shutil.copy(signed_boot_file("shimx64.efi"), os.path.join(root, "efi", "shimx64.efi"))
    shutil.copy(signed_boot_file("grubnetx64.efi"), os.path.join(root, "efi", "grubx64.efi"))
    if arm64:
        shutil.copy(signed_boot_file("grubnetaa64.efi"), os.path.join(root, "grubaa64.efi"))
    markers = {}
    for host in hosts:
        for secure in (True, False):
            text = grub_marker_text(host, secure, token)
            markers[(host, "sb" if secure else "grub")] = text
            with open(os.path.join(root, "marker-%s%s" % (host, "-sb" if secure else "")), "w") as f:
                # halt powers QEMU off under lockdown too (FIRMWARE-FACTS 6e);
                # the pause lets GRUB's last TFTP ACK leave first (without
                # it the arm64 guest sometimes powered off before the server
                # saw the ACK, and the server logged a timeout).
                f.write('echo "%s"\nsleep 2\nhalt\n' % text)
        markers[(host, "ipxe")] = ipxe_marker_text(host, token)
        with open(os.path.join(root, "marker-%s.ipxe" % host), "w") as f:
            f.write("#!ipxe\necho %s\nsleep 600\n" % markers[(host, "ipxe")])
    templates = os.path.join(os.path.dirname(root), "templates")
    os.makedirs(templates, exist_ok=True)
    with open(os.path.join(templates, "grub.cfg.in"), "w") as f:
        f.write(GRUB_TEMPLATE)
    with open(os.path.join(templates, "boot.ipxe.in"), "w") as f:
        f.write(IPXE_TEMPLATE)
    for directory in (root, os.path.join(root, "efi"), templates):
        os.chmod(directory, 0o755)
    return markers
