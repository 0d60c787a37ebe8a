#!/usr/bin/env bash
# Builds Shoal's busybox test image as an OCI image from Debian's busybox-static
# (/bin/busybox), without Docker and without network: plain tar, gzip, sha256sum, JSON.
#
#   scripts/image/build-busybox.sh OUT_DIR
#
# writes OUT_DIR/busybox-oci/ (an OCI image layout) and OUT_DIR/busybox.oci.tar (the same
# layout as an oci-archive, for `skopeo copy oci-archive:...` or `ctr images import`).
# The build is deterministic (fixed mtimes, sorted entries, numeric owners, gzip -n), so
# running it twice gives the same digests. Idempotent: it rebuilds into a temporary
# directory and swaps the results in.
#
# The image: /bin/busybox plus a symlink per applet (sh, httpd, wget, nslookup, nc, ping,
# hostname, sleep, cat, echo, ls, ...), /etc/passwd and /etc/group (root, nobody),
# empty /etc/hosts, /etc/resolv.conf and /etc/hostname (the runtime bind-mounts its own),
# /tmp (1777), /root, /var, /run, /www/index.html (for `httpd -f -h /www`).
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
OUT=$1
BUSYBOX=${BUSYBOX:-/bin/busybox}

if [[ ! -x $BUSYBOX ]]; then
  echo "build-busybox: $BUSYBOX not found; fix: apt-get install busybox-static" >&2
  exit 1
fi
if ! "$BUSYBOX" --list >/dev/null 2>&1; then
  echo "build-busybox: $BUSYBOX does not list applets (is it busybox-static?)" >&2
  exit 1
fi
for tool in tar gzip sha256sum stat; do
  command -v "$tool" >/dev/null || { echo "build-busybox: missing $tool" >&2; exit 1; }
done

case "$(uname -m)" in
  x86_64) ARCH=amd64 ;;
  aarch64) ARCH=arm64 ;;
  *) ARCH=$(uname -m) ;;
esac

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "build-busybox: building rootfs from $BUSYBOX ($ARCH)"
ROOT=$WORK/rootfs
mkdir -p "$ROOT"/{bin,etc,tmp,root,var,run,www,proc,sys,dev,usr/bin,usr/sbin,sbin}
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
n=0
for applet in $("$BUSYBOX" --list); do
  [[ $applet == busybox ]] && continue
  ln -s busybox "$ROOT/bin/$applet"
  n=$((n + 1))
done
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
: >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/hostname"
echo '<html><body>hello from shoal busybox</body></html>' >"$ROOT/www/index.html"
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
echo "build-busybox: $n applet symlinks in /bin"

LAYOUT=$WORK/busybox-oci
mkdir -p "$LAYOUT/blobs/sha256"

# Layer: a deterministic gzip'd tar.
tar --sort=name --mtime='@1' --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$ROOT" -cf "$WORK/layer.tar" .
DIFF_ID=$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)
gzip -n -9 -c "$WORK/layer.tar" >"$WORK/layer.tar.gz"
LAYER_DIGEST=$(sha256sum "$WORK/layer.tar.gz" | cut -d' ' -f1)
LAYER_SIZE=$(stat -c %s "$WORK/layer.tar.gz")
mv "$WORK/layer.tar.gz" "$LAYOUT/blobs/sha256/$LAYER_DIGEST"

blob() { # write stdin as a blob, print "digest size"
  local tmp=$WORK/blob.tmp d s
  cat >"$tmp"
  d=$(sha256sum "$tmp" | cut -d' ' -f1)
  s=$(stat -c %s "$tmp")
  mv "$tmp" "$LAYOUT/blobs/sha256/$d"
  echo "$d $s"
}

read -r CONFIG_DIGEST CONFIG_SIZE < <(printf '%s' \
'{"architecture":"'"$ARCH"'","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'"$DIFF_ID"'"]},"history":[{"created":"1970-01-01T00:00:01Z","created_by":"scripts/image/build-busybox.sh"}]}' | blob)

read -r MANIFEST_DIGEST MANIFEST_SIZE < <(printf '%s' \
'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$CONFIG_DIGEST"'","size":'"$CONFIG_SIZE"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$LAYER_DIGEST"'","size":'"$LAYER_SIZE"'}]}' | blob)

printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
printf '%s' \
'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$MANIFEST_DIGEST"'","size":'"$MANIFEST_SIZE"',"annotations":{"org.opencontainers.image.ref.name":"latest"},"platform":{"architecture":"'"$ARCH"'","os":"linux"}}]}' \
  >"$LAYOUT/index.json"

tar --sort=name --mtime='@1' --owner=0 --group=0 --numeric-owner -C "$LAYOUT" \
  -cf "$WORK/busybox.oci.tar" .

rm -rf "$OUT/busybox-oci"
mv "$LAYOUT" "$OUT/busybox-oci"
mv "$WORK/busybox.oci.tar" "$OUT/busybox.oci.tar"
echo "build-busybox: layout  $OUT/busybox-oci"
echo "build-busybox: archive $OUT/busybox.oci.tar"
echo "build-busybox: manifest sha256:$MANIFEST_DIGEST layer sha256:$LAYER_DIGEST ($LAYER_SIZE bytes)"
