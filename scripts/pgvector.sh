#!/usr/bin/env bash
# pgvector for the local PostgreSQL, built from Debian's own source package.
#
#   scripts/pgvector.sh          install pgvector into the newest cluster under /etc/postgresql (no-op when there)
#   scripts/pgvector.sh --check  only say whether it is installed (exit 0) or not (exit 1)
#
# Why a build: Debian 12 (bookworm) packages no pgvector for its PostgreSQL 15, newer suites package it only for
# their own PostgreSQL (trixie: postgresql-17-pgvector). The *source* package is version-independent, so we fetch it
# from a newer suite through a temporary, private apt state (nothing under /etc/apt or /var/lib/apt/lists changes;
# the download is checked against the suite's signed index by apt) and build it against postgresql-server-dev-NN.
# Debian's patch `no-native` drops -march=native, so the result runs on any x86-64 like the distro's own packages.
#
# Environment: PG_VERSION (major version to build for; default: newest under /etc/postgresql),
#              PGVECTOR_SUITE (Debian suite to take the source from; default trixie),
#              PGVECTOR_VERSION (exact Debian source version, e.g. 0.8.0-1; default: the suite's current one),
#              PGVECTOR_CACHE (private apt state and downloads; default ~/.cache/scaigrid/pgvector).
# Needs root for apt-get install and `make install`; it takes ~15 s once, then ~0.01 s.
set -euo pipefail

say() { printf 'pgvector.sh: %s\n' "$*" >&2; }
die() { printf 'pgvector.sh: error: %s\n' "$*" >&2; exit 1; }

PG_VERSION="${PG_VERSION:-$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)}"
[[ -n "$PG_VERSION" ]] \
    || die "no PostgreSQL cluster under /etc/postgresql (apt-get install postgresql), or set PG_VERSION"
SUITE="${PGVECTOR_SUITE:-trixie}"
CACHE="${PGVECTOR_CACHE:-$HOME/.cache/scaigrid/pgvector}"
PG_CONFIG="/usr/lib/postgresql/$PG_VERSION/bin/pg_config"
CONTROL="/usr/share/postgresql/$PG_VERSION/extension/vector.control"
LIBRARY="/usr/lib/postgresql/$PG_VERSION/lib/vector.so"

installed() { [[ -f "$CONTROL" && -f "$LIBRARY" ]]; }

if [[ "${1:-}" == "--check" ]]; then
    if installed; then say "installed for PostgreSQL $PG_VERSION ($CONTROL)"; exit 0; fi
    say "not installed for PostgreSQL $PG_VERSION (run scripts/pgvector.sh as root)"
    exit 1
fi

if installed; then
    say "already installed for PostgreSQL $PG_VERSION"
    exit 0
fi

[[ "$(id -u)" == 0 ]] || die "pgvector is missing for PostgreSQL $PG_VERSION and installing it needs root: sudo $0"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script builds from Debian's source package"

say "installing build dependencies: postgresql-server-dev-$PG_VERSION make gcc dpkg-dev"
if ! out="$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "postgresql-server-dev-$PG_VERSION" make gcc dpkg-dev 2>&1)"; then
    printf '%s\n' "$out" | tail -n 10 >&2
    die "apt-get install postgresql-server-dev-$PG_VERSION make gcc dpkg-dev failed (run apt-get update first?)"
fi
[[ -x "$PG_CONFIG" ]] || die "$PG_CONFIG missing after installing postgresql-server-dev-$PG_VERSION"

# A private apt state: our own sources list (deb-src only), lists and caches. The system's stay untouched.
mkdir -p "$CACHE/lists/partial" "$CACHE/cache/archives/partial" "$CACHE/src"
printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian %s main\n' \
    "$SUITE" >"$CACHE/sources.list"
APT=(-o "Dir::Etc::sourcelist=$CACHE/sources.list" -o "Dir::Etc::sourceparts=-"
     -o "Dir::State::Lists=$CACHE/lists" -o "Dir::Cache=$CACHE/cache" -o "APT::Sandbox::User=root")

say "fetching the source index of Debian $SUITE (private apt state in $CACHE)"
apt-get -q "${APT[@]}" update >/dev/null \
    || die "apt-get update for deb-src $SUITE failed (is deb.debian.org reachable? is the keyring current?)"

spec="pgvector${PGVECTOR_VERSION:+=$PGVECTOR_VERSION}"
work="$(mktemp -d "$CACHE/src/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
say "downloading source package $spec from $SUITE"
(cd "$work" && apt-get -q "${APT[@]}" source --download-only "$spec" >/dev/null) \
    || die "apt-get source $spec from $SUITE failed (try PGVECTOR_SUITE=sid or another PGVECTOR_VERSION)"
dsc="$(ls "$work"/pgvector_*.dsc | head -n 1)"
# dpkg-source cannot check the uploader's own signature (no keyring for it) and says so; the files were already
# checked by apt against the suite's signed index, so that note goes to the log.
(cd "$work" && dpkg-source -q -x "$(basename "$dsc")" tree >"$work/build.log" 2>&1) \
    || { cat "$work/build.log" >&2; die "unpacking $(basename "$dsc") failed"; }

# with_llvm=no: no JIT bitcode, so clang is not needed; pgvector works the same without it.
say "building $(basename "$dsc" .dsc) for PostgreSQL $PG_VERSION"
make -C "$work/tree" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" with_llvm=no >>"$work/build.log" 2>&1 \
    || { tail -n 20 "$work/build.log" >&2; die "make failed (log above)"; }
make -C "$work/tree" install PG_CONFIG="$PG_CONFIG" with_llvm=no >>"$work/build.log" 2>&1 \
    || { tail -n 20 "$work/build.log" >&2; die "make install failed (log above)"; }
installed || die "make install succeeded but $CONTROL or $LIBRARY is missing"

# Prove it: CREATE EXTENSION in a fresh database, when the server answers (it needs no restart).
if command -v psql >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}" >/dev/null 2>&1; then
    db="pgvector_check_$$"
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null
    if ! psql -q -h 127.0.0.1 -U postgres -d "$db" -c "CREATE EXTENSION vector" >/dev/null; then
        psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE $db" >/dev/null
        die "installed, but CREATE EXTENSION vector failed in a fresh database"
    fi
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE $db" >/dev/null
    say "CREATE EXTENSION vector works in a fresh database"
fi
say "installed $(basename "$dsc" .dsc) for PostgreSQL $PG_VERSION"
