#!/usr/bin/env bash
# First run, timed (issue 18): a fresh clone of this checkout, ./dev.sh up on a fresh database, the first platform
# key, and the README's first chat answer (by curl: the serve-only .venv has no openai SDK). Prints clone->ready
# and clone->first answer, and dev.sh's own per-stage set-up times.
#
#   bench/first_run.sh [WORKDIR]          (default /tmp/scaigrid-first-run; port 8000 must be free)
#
# The pip cache and ~/.cache/scaigrid (built models, the llama.cpp wheel) are whatever this machine has: say which
# ("warm cache, models built") beside the figures.
set -u
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/tmp/scaigrid-first-run}"
DB=sg_first_run
t0=$(date +%s.%N)
rm -rf "$WORK"
git clone -q "$SRC" "$WORK" && cd "$WORK" || exit 1
dropdb -h 127.0.0.1 -U postgres --if-exists "$DB"
createdb -h 127.0.0.1 -U postgres "$DB" || exit 1
export SCAIGRID_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/$DB"
./dev.sh up >"$WORK.log" 2>&1 &
UP=$!
until curl -sf -m 2 localhost:8000/readyz >/dev/null 2>&1; do
    sleep 0.5
    kill -0 "$UP" 2>/dev/null || { echo "./dev.sh up exited; its log: $WORK.log"; tail -n 20 "$WORK.log"; exit 1; }
done
t1=$(date +%s.%N)
KEY="$(.venv/bin/scaigrid admin bootstrap 2>/dev/null | tail -n 1)"
curl -sf localhost:8000/v1/chat/completions -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hello!"}]}' | head -c 200
echo
t2=$(date +%s.%N)
printf 'clone -> ready %.1f s; clone -> first answer %.1f s\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t0" | bc)"
grep 'setup: .*done in' "$WORK.log"
kill -TERM "$UP"; wait "$UP" 2>/dev/null
bash "$WORK/scripts/falkordb.sh" stop
dropdb -h 127.0.0.1 -U postgres --if-exists "$DB"
