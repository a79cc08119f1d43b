#!/usr/bin/env bash
# One run each: SQLite x1, PostgreSQL x1, PostgreSQL x3 (clients spread over the three).
set -u
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/tollgate}
PG=${TOLLGATE_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}
W=$(mktemp -d)
DUR=${DUR:-10}
CL=${CL:-16}
wait_up() { for i in $(seq 100); do curl -sf "$1/livez" >/dev/null && return 0; sleep 0.1; done; echo "no $1"; return 1; }
run() { echo "=== $1"; shift; "$@" 2>&1 | sed 's/^/  /'; }

# SQLite, one replica
$BIN serve --data $W/sq --listen 127.0.0.1:8301 >$W/sq.log 2>&1 & P1=$!
wait_up http://127.0.0.1:8301
run "SQLite, 1 replica" env TOLLGATE_TOKEN=$(cat $W/sq/admin.token) $BIN bench http --addr http://127.0.0.1:8301 --duration-secs $DUR --clients $CL
kill $P1; wait $P1 2>/dev/null

# PostgreSQL, one replica
S1=bench_one_$$; S3=bench_three_$$
TOLLGATE_STORE=$PG TOLLGATE_STORE_SCHEMA=$S1 $BIN serve --data $W/pg1 --listen 127.0.0.1:8302 >$W/pg1.log 2>&1 & P2=$!
wait_up http://127.0.0.1:8302
run "PostgreSQL, 1 replica" env TOLLGATE_TOKEN=$(cat $W/pg1/admin.token) $BIN bench http --addr http://127.0.0.1:8302 --duration-secs $DUR --clients $CL
kill $P2; wait $P2 2>/dev/null

# PostgreSQL, three replicas over one schema, shared keys
TOLLGATE_STORE=$PG TOLLGATE_STORE_SCHEMA=$S3 $BIN serve --data $W/pg3 --listen 127.0.0.1:8311 >$W/pg3a.log 2>&1 & A=$!
wait_up http://127.0.0.1:8311
TOLLGATE_STORE=$PG TOLLGATE_STORE_SCHEMA=$S3 $BIN serve --data $W/pg3 --listen 127.0.0.1:8312 >$W/pg3b.log 2>&1 & B=$!
TOLLGATE_STORE=$PG TOLLGATE_STORE_SCHEMA=$S3 $BIN serve --data $W/pg3 --listen 127.0.0.1:8313 >$W/pg3c.log 2>&1 & C=$!
wait_up http://127.0.0.1:8312; wait_up http://127.0.0.1:8313
run "PostgreSQL, 3 replicas" env TOLLGATE_TOKEN=$(cat $W/pg3/admin.token) $BIN bench http --addr http://127.0.0.1:8311 --replica http://127.0.0.1:8312 --replica http://127.0.0.1:8313 --duration-secs $DUR --clients $CL
kill $A $B $C; wait 2>/dev/null
psql -q $PG -c "DROP SCHEMA $S1 CASCADE; DROP SCHEMA $S3 CASCADE;" >/dev/null 2>&1
rm -rf $W
