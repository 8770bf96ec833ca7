#!/usr/bin/env bash
# ScaiGrid developer front door.
#
#   ./dev.sh setup              create .venv and install what the tests use (skipped when setup.py is unchanged)
#   ./dev.sh services           start PostgreSQL, Redis and RabbitMQ if they are not answering; create db "scaigrid"
#   ./dev.sh test [pytest args] setup + services, then pytest: the unit layer, then the rest (or just the args)
#   ./dev.sh up [args]          what serving needs + services (+ FalkorDB for the knowledge graph), then `scaigrid up`
#
# Environment: PYTHON (interpreter used to create .venv, default python3),
#              SERVICE_TIMEOUT (seconds to wait for each service, default 90).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"
SERVICE_TIMEOUT="${SERVICE_TIMEOUT:-90}"

export PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
    # Never wait for a prompt in CI.
    export PIP_NO_INPUT=1
    exec </dev/null
fi

say() { printf 'dev.sh: %s\n' "$*" >&2; }
die() { printf 'dev.sh: error: %s\n' "$*" >&2; exit 1; }

# need CMD HINT: fail with an install hint when CMD is missing.
need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install $2"
}

usage() {
    cat >&2 <<'EOF'
usage: ./dev.sh <command> [args...]

  setup               create .venv and pip install -e '.[cpu,dev,export]' + llama-cpp-python's server (the tests'
                      upstream); skipped when setup.py is unchanged
  services            start PostgreSQL, Redis, RabbitMQ when not answering; ensure database "scaigrid"
  test [pytest args]  setup + services, then: .venv/bin/python -m pytest -q -ra -m unit tests/unit (stops on a
                      failure), then -m "not unit" (the graph tests); with args: pytest -q -ra [args] alone
  up [args]           what serving needs (.[cpu]; the export extra while the models are not built) + services,
                      then: .venv/bin/scaigrid up [args]
EOF
}

# ---------------------------------------------------------------- setup

# llama-cpp-python's server is the independent OpenAI-compatible upstream the tests talk to. It compiles
# llama.cpp (~11 CPU-minutes: 6+ minutes on 2 free cores), so its wheel is built once into a cache and
# installed from there.
# Build flags: a fixed x86-64-v3 (Haswell: AVX2/FMA/F16C/BMI2) CPU backend instead of GGML_NATIVE's
# -march=native. The native build picked up AMX on Sapphire Rapids-class hosts, and llama.cpp's AMX
# kernels die with SIGILL on their first matmul when built by GCC 12: _tile_loadconfig's asm operand
# covers only 8 bytes of the 64-byte tile config, so GCC drops the stores to rows/colsb as dead, loads an
# empty config, and the next tilezero/tileloadd is #UD. A native wheel also would not run on an older
# CPU than the one that built it. No multimodal (mtmd) library: the tests serve a text model.
LLAMA_VERSION="0.3.36"
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DLLAVA_BUILD=OFF"
WHEELS="${SCAIGRID_WHEEL_CACHE:-$HOME/.cache/scaigrid/wheels}"
install_llama_server() {
    # The cache key is the version plus a hash of the build flags: a wheel built with other flags (the old
    # native/AMX one sat directly in $WHEELS) is never picked up, and changing the flags rebuilds once.
    local key dir wheel
    key="$(printf '%s\n' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)"
    dir="$WHEELS/llama-cpp-python-$LLAMA_VERSION-$key"
    rm -f "$WHEELS"/llama_cpp_python-*.whl  # pre-key native builds: they crash on AMX hosts
    wheel="$(ls "$dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
    if [[ -z "$wheel" ]]; then
        say "setup: building llama-cpp-python $LLAMA_VERSION (AVX2, no AMX) once into $dir (compiles llama.cpp: minutes)"
        mkdir -p "$dir"
        # --no-cache-dir: pip's own wheel cache keys on the sdist, not on CMAKE_ARGS, and would hand back a
        # wheel built with other flags (it held the native one).
        CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PY" -m pip wheel -q --no-deps --no-cache-dir \
            --no-binary llama-cpp-python -w "$dir" "llama-cpp-python==$LLAMA_VERSION" \
            || die "building llama-cpp-python failed (needs gcc, g++, cmake)"
        printf '%s\n' "$LLAMA_CMAKE_ARGS" >"$dir/CMAKE_ARGS"
        wheel="$(ls "$dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)"
    fi
    say "setup: installing $(basename "$wheel") with its server"
    # Same version as a possibly installed native build, so force this wheel in; then its [server] extras.
    "$PY" -m pip install -q --force-reinstall --no-deps "$wheel"
    "$PY" -m pip install -q "$wheel[server]"
}

# stage WHAT CMD...: run one set-up stage, and say how long it took
stage() {
    local what="$1" began=$SECONDS
    shift
    say "setup: $what"
    "$@"
    say "setup: $what: done in $((SECONDS - began)) s"
}

# models_built: the default local models are prepared and verified (then serving needs no export extra)
models_built() {
    "$PY" - <<'PY' 2>/dev/null
import sys
from scaigrid.adapters.backends import manifest, prepare
root = prepare.models_dir()
sys.exit(0 if all(not manifest.problems(root / model, full=False) for model in prepare.SPECS) else 1)
PY
}

# export_installed: torch and optimum, which `scaigrid models prepare` (and `scaigrid up`'s first run) build with
export_installed() { "$PY" -c 'import torch, optimum.exporters.onnx' >/dev/null 2>&1; }

# setup [serve|test]. serve (what `up` needs): the package with onnxruntime, spaCy's model, and the export extra
# only while the local models are not built yet. test (`test`, `setup`): everything the tests use besides: the dev
# extra and llama-cpp-python's server (which compiles llama.cpp: minutes no `up` should wait for).
cmd_setup() {
    local flavour="${1:-test}"
    need "$PYTHON" "Python 3.11+ (or set PYTHON=/path/to/python3)"
    if [[ -x "$PY" ]] && ! "$PY" -c 'import sys' >/dev/null 2>&1; then
        say "existing .venv is broken (its interpreter no longer runs); recreating"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$PY" ]]; then
        say "creating .venv with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi

    local sum began=$SECONDS
    # what .venv is built from: setup.py and the llama.cpp build flags (a venv with an older build is redone)
    sum="$( (cat setup.py; printf '%s\n' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS") | sha256sum | cut -d' ' -f1)"
    # a test install holds everything a serve install does
    if [[ -f "$VENV/.installed-test-$sum" || ( "$flavour" == serve && -f "$VENV/.installed-serve-$sum" ) ]]; then
        if [[ "$flavour" == serve ]] && ! models_built && ! export_installed; then
            stage "the local models are not built: pip install -e '.[cpu,export]' (torch, optimum)" \
                "$PY" -m pip install -q -e '.[cpu,export]'
        fi
        say "setup: .venv up to date (setup.py unchanged)"
        return 0
    fi

    stage "upgrading pip" "$PY" -m pip install -q --upgrade pip
    if [[ "$flavour" == test ]]; then
        stage "pip install -e '.[cpu,dev,export]' (a few minutes on a clean clone)" \
            "$PY" -m pip install -q -e '.[cpu,dev,export]'  # export: scaigrid models prepare (torch, optimum)
        stage "llama-cpp-python's server (the tests' upstream)" install_llama_server
    else
        stage "pip install -e '.[cpu]'" "$PY" -m pip install -q -e '.[cpu]'
        if ! models_built; then  # `scaigrid up` builds them on its first run
            stage "the local models are not built: pip install -e '.[cpu,export]' (torch, optimum)" \
                "$PY" -m pip install -q -e '.[cpu,export]'
        fi
    fi
    stage "spaCy's English model (pinned by hash)" "$PY" -m scaigrid.adapters.graph.extract install
    rm -f "$VENV"/.installed-"$flavour"-*
    : >"$VENV/.installed-$flavour-$sum"
    say "setup: done in $((SECONDS - began)) s"
}

# ---------------------------------------------------------------- services

pg_up()     { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }
redis_up()  { [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == "PONG" ]]; }
tcp_open()  { timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" >/dev/null 2>&1; }
rabbit_up() { tcp_open 127.0.0.1 5672; }

# wait_for NAME CHECK_FN: poll until CHECK_FN succeeds or SERVICE_TIMEOUT passes.
wait_for() {
    local name="$1" check="$2" deadline=$((SECONDS + SERVICE_TIMEOUT))
    until "$check"; do
        if ((SECONDS >= deadline)); then
            die "$name did not answer within ${SERVICE_TIMEOUT}s"
        fi
        sleep 1
    done
}

start_postgres() {
    need pg_isready "postgresql-client (apt-get install postgresql-client)"
    if pg_up; then
        say "services: postgres already up"
        return 0
    fi
    need pg_ctlcluster "postgresql (apt-get install postgresql)"
    local ver
    # One cluster version is expected; take the newest if several are installed.
    ver="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$ver" ]] || die "postgres: no cluster under /etc/postgresql (apt-get install postgresql)"
    say "services: starting postgres $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start \
        || say "services: 'pg_ctlcluster $ver main start' failed (needs root?); waiting anyway"
    wait_for postgres pg_up
    say "services: postgres up"
}

start_redis() {
    need redis-cli "redis-tools (apt-get install redis-tools)"
    if redis_up; then
        say "services: redis already up"
        return 0
    fi
    need redis-server "redis-server (apt-get install redis-server)"
    say "services: starting redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log \
        || say "services: redis-server failed to start (needs root? see /var/log/redis/ci.log); waiting anyway"
    wait_for redis redis_up
    say "services: redis up"
}

start_rabbitmq() {
    if rabbit_up; then
        say "services: rabbitmq already up"
        return 0
    fi
    need rabbitmq-server "rabbitmq-server (apt-get install rabbitmq-server)"
    say "services: starting rabbitmq (this takes a while)"
    rabbitmq-server -detached \
        || say "services: rabbitmq-server -detached failed (needs root?); waiting anyway"
    wait_for rabbitmq rabbit_up
    if command -v rabbitmqctl >/dev/null 2>&1; then
        timeout "$SERVICE_TIMEOUT" rabbitmqctl -q await_startup >/dev/null 2>&1 \
            || die "rabbitmq: port 5672 open but 'rabbitmqctl await_startup' did not succeed"
    fi
    say "services: rabbitmq up"
}

ensure_database() {
    need psql "postgresql-client (apt-get install postgresql-client)"
    need createdb "postgresql-client (apt-get install postgresql-client)"
    local have out
    have="$(psql -h 127.0.0.1 -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'scaigrid'" 2>/dev/null || true)"
    if [[ "$have" == "1" ]]; then
        return 0
    fi
    say "services: creating database scaigrid"
    if ! out="$(createdb -h 127.0.0.1 -U postgres scaigrid 2>&1)"; then
        [[ "$out" == *"already exists"* ]] || die "postgres: createdb scaigrid failed: $out"
    fi
}

cmd_services() {
    start_postgres
    "$ROOT/scripts/pgvector.sh" || die "pgvector set-up failed (see above)"
    start_redis
    start_rabbitmq
    ensure_database
}

# ---------------------------------------------------------------- test / up

# pytest_phase NAME ARGS...: pytest -q -ra ARGS; exits on a failure, and on "no tests collected" (exit 5).
pytest_phase() {
    local name="$1" rc=0
    shift
    say "test: $name: .venv/bin/python -m pytest -q -ra $*"
    "$PY" -m pytest -q -ra "$@" || rc=$?
    if ((rc == 5)); then
        say "test: $name: pytest collected no tests; treating that as a failure"
        exit 1
    fi
    ((rc == 0)) || exit "$rc"
}

# Test-only tools (never needed by `up`): Debian's prometheus package, whose promtool parses the generated Grafana
# dashboard's queries and whose server scrapes a running graph (tests/test_dashboard.py); ~35 s once. Without root
# it says how; the test then fails under CI=true and is skipped otherwise.
test_tools() {
    command -v promtool >/dev/null 2>&1 && return 0
    local sudo=""
    if ((EUID != 0)); then
        sudo -n true 2>/dev/null || { say "test: no promtool (apt-get install prometheus) and no root to install it"; return 0; }
        sudo="sudo -n"
    fi
    say "test: installing promtool (apt-get install prometheus)"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null; } || say "test: installing prometheus failed: tests/test_dashboard.py will say so"
}

cmd_test() {
    cmd_setup
    cmd_services
    test_tools
    if (($# > 0)); then
        pytest_phase "given" "$@"  # ./dev.sh test tests/test_x.py -k y: just what was asked for
        exit 0
    fi
    # the fast layer first (no graph; under a minute): a failure there stops before the graph tests start
    pytest_phase "unit" -m unit tests/unit
    pytest_phase "graphs" -m "not unit"
    exit 0
}

cmd_up() {
    cmd_setup serve
    cmd_services
    if [[ -z "${SCAIGRID_NEO4J_URL:-}" ]]; then
        # The knowledge graph of RAG collections: FalkorDB's Bolt listener stands in for Neo4j on a developer
        # machine (set SCAIGRID_NEO4J_URL to use a real Neo4j; docs/rag.md).
        SCAIGRID_NEO4J_URL="$("$ROOT/scripts/falkordb.sh" start)" || die "FalkorDB did not start (see above)"
        export SCAIGRID_NEO4J_URL
        say "up: knowledge graph on FalkorDB at $SCAIGRID_NEO4J_URL (scripts/falkordb.sh stop ends it)"
    fi
    exec "$VENV/bin/scaigrid" up "$@"
}

# ---------------------------------------------------------------- main

if (($# == 0)); then
    usage
    exit 2
fi
sub="$1"
shift
case "$sub" in
    setup)    cmd_setup ;;
    services) cmd_services ;;
    test)     cmd_test "$@" ;;
    up)       cmd_up "$@" ;;
    -h|--help|help) usage; exit 0 ;;
    *)        say "unknown command: $sub"; usage; exit 2 ;;
esac
