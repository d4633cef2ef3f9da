#!/usr/bin/env bash
# Build a Debian bookworm base image without any registry: debootstrap (minimal variant) from the
# Debian mirror this machine's apt already uses, trimmed like the usual "slim" images, then
# `docker import`. The tag carries a hash of this script and the mirror, so an unchanged recipe is
# built once and reused: a second `make image` skips this step entirely.
#
#   deploy/make-base.sh      prints the tag of the base image, building it when missing
#
# Environment: DOCKER (client command, default `docker`), RAVEN_DEBIAN_MIRROR (default: the
# mirror apt uses for bookworm/main), RAVEN_BASE_REPO (default raven-base).
set -euo pipefail

DOCKER=${DOCKER:-docker}
SUITE=bookworm
REPO=${RAVEN_BASE_REPO:-raven-base}

mirror() {
    if [[ -n ${RAVEN_DEBIAN_MIRROR:-} ]]; then
        echo "$RAVEN_DEBIAN_MIRROR"
        return
    fi
    # "500 http://deb.debian.org/debian bookworm/main amd64 Packages" -> the URL
    apt-cache policy | awk -v s=" $SUITE/main " 'index($0, s) && $2 ~ /^https?:/ {print $2; exit}'
}

MIRROR=$(mirror)
if [[ -z $MIRROR ]]; then
    echo "make-base: no apt source for $SUITE/main found; set RAVEN_DEBIAN_MIRROR" >&2
    exit 2
fi
SECURITY=${MIRROR%/debian}/debian-security
RECIPE=$( (cat "$0"; echo "$MIRROR") | sha256sum | cut -c1-12)
TAG="$REPO:$SUITE-$RECIPE"

if $DOCKER image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    echo "make-base: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 2
fi

ROOT=$(mktemp -d /var/tmp/raven-base.XXXXXX)
chmod 0755 "$ROOT" # it becomes the image's /
LOG=$(mktemp /var/tmp/raven-base.log.XXXXXX)
cleanup() {
    rm -rf --one-file-system "$ROOT"
    rm -f "$LOG"
}
trap cleanup EXIT

# Run a noisy step with its output kept aside; show the end of it only when the step fails.
quiet() {
    if ! "$@" >"$LOG" 2>&1; then
        echo "make-base: failed: $*" >&2
        tail -20 "$LOG" >&2
        exit 1
    fi
}

echo "make-base: debootstrap $SUITE from $MIRROR" >&2
quiet debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR"

# What later packages must not install: documentation, manuals and translations (copyright
# files stay), the exclusions every slim Debian image makes.
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/raven-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
# No recommended packages, and no downloaded .debs or package caches left in a layer.
cat >"$ROOT/etc/apt/apt.conf.d/raven-slim" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Binary::apt::APT::Keep-Downloaded-Packages "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
cat >"$ROOT/etc/apt/sources.list" <<LIST
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
LIST

# Security updates for what debootstrap installed.
quiet chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -qq && apt-get -y -qq upgrade'

find "$ROOT/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$ROOT"/usr/share/{man,info,locale,lintian}/* \
    "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log \
    "$ROOT"/var/cache/debconf/*-old "$ROOT"/tmp/* "$ROOT"/root/.bash_history

tar --numeric-owner --xattrs -C "$ROOT" -c . | $DOCKER import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$TAG" >/dev/null
echo "$TAG"
