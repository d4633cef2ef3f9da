#!/usr/bin/env bash
# Build Raven's image from this checkout and print its size.
#
#   deploy/build-image.sh [--base IMAGE] [--tag TAG]
#
# Without --base, the base is made locally (deploy/make-base.sh: debootstrap + docker import, no
# registry needed) and reused while its recipe is unchanged. The wheels of Raven and its
# dependencies are built here on the host, with the host's pip settings (index, proxy, CA), by
# PYTHON (default: the project's .venv), which must be the image's Python, 3.11. The context
# holds only those wheels and the Dockerfile. DOCKER names the client command.
set -euo pipefail

DOCKER=${DOCKER:-docker}
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
PYTHON=${PYTHON:-$TOP/.venv/bin/python}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$TOP/pyproject.toml")
TAG="raven:$VERSION"
BASE=""
while (($#)); do
    case $1 in
    --base) BASE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    *) echo "usage: $0 [--base IMAGE] [--tag TAG]" >&2; exit 2 ;;
    esac
done
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    echo "build-image: $PYTHON is not Python 3.11, the image's; its wheels would not fit" >&2
    exit 2
fi

start=$(date +%s)
if [[ -z $BASE ]]; then
    BASE=$(DOCKER=$DOCKER "$HERE/make-base.sh")
fi
CTX=$(mktemp -d /var/tmp/raven-image.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
mkdir "$CTX/deps" "$CTX/raven"
"$PYTHON" -m pip wheel -q --disable-pip-version-check --wheel-dir "$CTX/deps" "$TOP" \
    >"$CTX/pip.log" 2>&1 || { tail -20 "$CTX/pip.log" >&2; exit 1; }
mv "$CTX"/deps/raven-*.whl "$CTX/raven/"
cp "$HERE/Dockerfile" "$CTX/"
# --network host: the build's apt reaches the mirror the host reaches, and the daemon needs no
# bridge or NAT of its own. The build stage gets a tag of its own: it is the layer cache of the
# next build, and what a newer build leaves untagged can go.
build() {
    $DOCKER build -q --network host --build-arg "BASE=$BASE" "$@" "$CTX" >"$CTX/build.log" 2>&1 ||
        { tail -30 "$CTX/build.log" >&2; exit 1; }
}
build --target build -t "${TAG%%:*}-build:${TAG#*:}"
build -t "$TAG"
# Earlier builds of Raven's image that no tag names any more (never anyone else's images).
$DOCKER image prune -f --filter label=io.raven.image >/dev/null
size=$($DOCKER image inspect -f '{{.Size}}' "$TAG")
echo "built $TAG from $BASE in $(($(date +%s) - start)) s: $((size / 1000000)) MB"
