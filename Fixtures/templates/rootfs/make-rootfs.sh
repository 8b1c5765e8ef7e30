#!/bin/sh
# Makes a minimal root filesystem tarball from this host's binaries:
# dash as /bin/sh, a few coreutils, their shared libraries, and an /etc
# with root and user accounts. Usage: make-rootfs.sh OUT.tar.gz [--pad-mb N]
set -eu
out=$1
pad=0
if [ "${2:-}" = "--pad-mb" ]; then pad=$3; fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/home/user" "$root/tmp" "$root/root"
chmod 1777 "$root/tmp"
for b in /usr/bin/dash /usr/bin/cat /usr/bin/ls /usr/bin/id /usr/bin/rm /usr/bin/mkdir; do
  cp "$b" "$root/bin/"
  for lib in $(ldd "$b" | awk '/=>/ {print $3} /^\t\// {print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
ln -s dash "$root/bin/sh"
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' > "$root/etc/group"
printf 'ID=sandpit-mini\nNAME="Sandpit mini rootfs"\n' > "$root/etc/os-release"
chown 1000:1000 "$root/home/user"
if [ "$pad" -gt 0 ]; then
  # Incompressible bulk, to measure that template size does not change create cost.
  mkdir -p "$root/opt/bulk"
  head -c "$((pad * 1024 * 1024))" /dev/urandom > "$root/opt/bulk/data.bin"
fi
tar --create --gzip --numeric-owner --file "$out" -C "$root" .
