#!/usr/bin/env bash
# Debian's signed arm64 network GRUB (grubnetaa64.efi.signed) for the arm64
# boot test and bench.  The package cannot be installed on amd64: download
# the .deb for arm64 and unpack it into a fixed place that tests/lab/
# looks in (OWNSOCKET_ARM64_GRUB overrides it).  Idempotent.
set -euo pipefail
dest=${OWNSOCKET_ARM64_GRUB_DIR:-/var/lib/ownsocket-ci/grub-efi-arm64-signed}
if [ -f "$dest/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed" ]; then
    echo "arm64 GRUB already in $dest"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
fi
$SUDO apt-get update -q -o DPkg::Lock::Timeout=600 > /dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt-get download runs as _apt
(cd "$work" && apt-get download -q grub-efi-arm64-signed:arm64)
$SUDO mkdir -p "$dest"
$SUDO dpkg-deb -x "$work"/grub-efi-arm64-signed_*_arm64.deb "$dest"
ls -l "$dest/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed"
