#!/usr/bin/env bash
# Where CPU goes in the 3-replica PostgreSQL run: CPU seconds of the
# PostgreSQL server processes, the three replicas and the load generator.
set -u
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/tollgate}
PG=${TOLLGATE_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}
W=$(mktemp -d); S=cpu_three_$$
wait_up() { for i in $(seq 100); do curl -sf "$1/livez" >/dev/null && return 0; sleep 0.1; done; }
pgcpu() { ps -C postgres -o times= | awk '{s+=$1} END {print s}'; }
for p in 8321 8322 8323; do
  TOLLGATE_STORE=$PG TOLLGATE_STORE_SCHEMA=$S $BIN serve --data $W/d --listen 127.0.0.1:$p >$W/$p.log 2>&1 &
  wait_up http://127.0.0.1:$p
done
PIDS=$(pgrep -f "listen 127.0.0.1:832")
tgcpu() { for p in $PIDS; do ps -p $p -o times=; done | awk '{s+=$1} END {print s}'; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
pg0=$(busy); tg0=$(tgcpu)
/usr/bin/time -f "load generator: %U user + %S sys s" env TOLLGATE_TOKEN=$(cat $W/d/admin.token) $BIN bench http --addr http://127.0.0.1:8321 --replica http://127.0.0.1:8322 --replica http://127.0.0.1:8323 --duration-secs 10 --clients 16 2>&1 | grep -E "requests|latency|load generator"
b1=$(busy); t1=$(tgcpu); hz=$(getconf CLK_TCK); echo "machine busy CPU s: $(( (b1 - pg0) / hz ))   tollgate replicas CPU s: $(( t1 - tg0 ))   (the rest: PostgreSQL, the load generator, the kernel)"; for p in $PIDS; do grep -E "VmRSS" /proc/$p/status; done
kill $PIDS; wait 2>/dev/null
psql -q $PG -c "DROP SCHEMA $S CASCADE" >/dev/null 2>&1; rm -rf $W
