"""
What network loaders ask for besides their real files, and what they fetch next.

shim and GRUB look for several optional files on every boot
(FIRMWARE-FACTS §6c): shim's revocation lists and extra certificate, GRUB's
module lists.  None of them exists on a normal server, the loaders carry on
when they are missing, and a sysadmin should not chase them as errors.  The
TFTP and HTTP services still answer "not found" at once (any delay costs
every boot); they only log such names as expected probes.

The second half answers the sysadmin's next question: after shim, what will
the machine ask for?  shim builds the path of C{grubx64.efi} from the
directory of the BOOTP C{file} field (not option 67, §6d), and Debian's
signed network GRUB asks for C{/grub/grub.cfg} and nothing per machine
(§6e).  L{next_fetches} turns that into names for C{explain}.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

#: (pattern over the normalised path, why it is asked for).
_PROBES = (
    (re.compile(r"(^|/)revocations_(sku|sbat)\.efi$", re.I),
     "shim's optional revocation list (FIRMWARE-FACTS §6c); not found is normal"),
    (re.compile(r"(^|/)shim_certificate_\d+\.efi$", re.I),
     "shim's optional extra certificate (FIRMWARE-FACTS §6c); not found is normal"),
    (re.compile(r"(^|/)[^/]+\.lst$", re.I),
     "GRUB's optional module list (FIRMWARE-FACTS §6c); not found is normal"),
)


def expected_probe(name) -> Optional[str]:
    """
    Why a loader asks for C{name} although it may not exist, or None for a
    name that a sysadmin should look into when it is missing.

    @param name: the file name as the client sent it (a leading slash and
        backslashes are allowed) or as a normalised path.
    """
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    path = name.replace("\\", "/").lstrip("/")
    for pattern, why in _PROBES:
        if pattern.search(path):
            return why
    return None


#: shim's second stage and the signed network GRUB's directory per option 93.
_GRUB_CPU = {6: "i386", 7: "x86_64", 9: "x86_64", 10: "arm", 11: "arm64",
             15: "i386", 16: "x86_64", 18: "arm", 19: "arm64"}
_SHIM_LOADER = {6: "grubia32.efi", 7: "grubx64.efi", 9: "grubx64.efi", 10: "grubarm.efi",
                11: "grubaa64.efi", 15: "grubia32.efi", 16: "grubx64.efi", 18: "grubarm.efi",
                19: "grubaa64.efi"}

#: Markers of the SBAT section (".sbat", CSV) that every Secure Boot signed
#: shim and GRUB carry; they tell the two apart whatever the file is called.
_SBAT_SHIM = b"\nshim,"
_SBAT_GRUB = b"\ngrub,"


def loader_kind(filename: str, path: Optional[str] = None) -> Optional[str]:
    """
    C{"shim"}, C{"grub"} or None for the boot file C{filename}.

    The file's SBAT data decides when C{path} (the file under the TFTP root)
    can be read; otherwise the name (C{shim*.efi}, C{grub*.efi*}).
    """
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = handle.read(8 * 1024 * 1024)
        except OSError:
            data = b""
        if _SBAT_SHIM in data:
            return "shim"
        if _SBAT_GRUB in data:
            return "grub"
        if data:
            return None
    base = filename.rsplit("/", 1)[-1].lower()
    if base.startswith("shim"):
        return "shim"
    if base.startswith("grub") and ".efi" in base:
        return "grub"
    return None


def bootp_file_directory(filename: str) -> str:
    """The directory shim prefixes to its second stage: everything up to the
    last slash of the BOOTP C{file} field (C{""} for a name in the root)."""
    return filename.rsplit("/", 1)[0] + "/" if "/" in filename else ""


def next_fetches(kind: str, filename: str, arch: Optional[int]) -> List[Tuple[str, str]]:
    """
    The TFTP names a loader asks for after it started, in order, each with a
    note (C{"probe"} for an optional file, C{"needed"} for one it cannot do
    without).

    @param kind: C{"shim"} or C{"grub"} (see L{loader_kind}).
    @param filename: the boot file as it goes into the BOOTP C{file} field.
    @param arch: option 93 of the client.
    """
    out: List[Tuple[str, str]] = []
    if kind == "shim":
        directory = bootp_file_directory(filename)
        for name in ("revocations_sku.efi", "revocations_sbat.efi", "shim_certificate_0.efi"):
            out.append((directory + name, "probe"))
        # shim 16.1 asks for its DEFAULT_LOADER, which is grubx64.efi in
        # Debian's x64 build; other architectures use their own name.
        out.append((directory + _SHIM_LOADER.get(arch, "grubx64.efi"), "needed"))
    cpu = _GRUB_CPU.get(arch, "x86_64")
    for name in ("command", "fs", "crypto", "terminal"):
        out.append((f"/grub/{cpu}-efi/{name}.lst", "probe"))
    out.append(("/grub/grub.cfg", "needed"))
    return out


def describe_next(filename: str, arch: Optional[int], root: Optional[str],
                  generated=lambda path: None) -> List[str]:
    """
    Lines for C{explain}: what shim and GRUB will fetch after C{filename},
    whether each needed file is there (under C{root}) or generated per
    machine (C{generated(path)} returns a description or None).
    """
    if not filename or "://" in filename:
        return []
    path = os.path.join(root, filename.lstrip("/")) if root else None
    kind = loader_kind(filename, path if path and os.path.isfile(path) else None)
    if kind is None:
        return []
    lines = []
    if kind == "shim":
        lines.append(f"{filename} is shim: it takes the directory of its second stage from the BOOTP "
                     f"'file' field ({filename!r}; option 67 is ignored) and the server from siaddr")
    else:
        lines.append(f"{filename} is GRUB: it asks for its config at the fixed path /grub/grub.cfg "
                     "(no per-MAC names: serve it per machine with the 'template' selector)")
    lines.append("it will fetch, in order:")
    for name, role in next_fetches(kind, filename, arch):
        if role == "probe":
            state = "optional probe, 'not found' is normal"
        else:
            state = generated(name.lstrip("/"))
            if state is None and root is not None:
                on_disk = os.path.join(root, name.lstrip("/"))
                state = (f"file under the TFTP root ({os.path.getsize(on_disk)} bytes)"
                         if os.path.isfile(on_disk) else "MISSING under the TFTP root: the boot will stop here")
            state = state or "needed"
        lines.append(f"  {name:<36} {state}")
    return lines
