#!/usr/bin/env bash
# PostgreSQL connection cost: `psql -c 'select 1'` against one real
# PostgreSQL 15, with Sigil certificate authentication (`hostssl … cert`,
# the database output's key and certificate, the server's CRL from the
# database-server output) vs. password authentication (scram-sha-256) over
# the same TLS with the same server certificate. Same server, same client,
# same run; alternating, so drift hits both alike. Both verify the server
# (sslmode=verify-full). Needs root (PostgreSQL runs as `postgres`) and a
# built sigil. Prints medians and their ratio.
#   sudo benches/db_connect.sh [SIGIL_BINARY] [N=60]
set -euo pipefail
cd "$(dirname "$0")/.."
SIGIL=${1:-${CARGO_TARGET_DIR:-target}/release/sigil}
N=${2:-60}
[ "$(id -u)" -eq 0 ] || { echo "run as root (PostgreSQL runs as postgres)"; exit 2; }
WORK=$(mktemp -d /var/tmp/sigil-db-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    scripts/test-postgres stop "$WORK/pg" >/dev/null 2>&1 || true
    wait 2>/dev/null || true; rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=$(port); PUB=$(port); PGP=$(port)

PGURL=$(scripts/test-postgres start "$WORK/pg" "$PGP")
ADMIN="$PGURL?sslmode=disable"
psql "$ADMIN" -qc "CREATE ROLE app_ro LOGIN" -c "SET password_encryption = 'scram-sha-256'" \
  -c "CREATE ROLE app_pw LOGIN PASSWORD 'bench-password'" -c "CREATE DATABASE orders" >/dev/null

"$SIGIL" auth start --data-dir "$WORK/data" --listen 127.0.0.1:$P --public-listen 127.0.0.1:$PUB \
  --cluster-name bench.test >/dev/null 2>"$WORK/auth.log" & PIDS+=($!)
for _ in $(seq 100); do [ -S "$WORK/data/admin.sock" ] && break; sleep 0.1; done
S() { "$SIGIL" --data-dir "$WORK/data" "$@"; }
cat >"$WORK/res.yaml" <<YAML
kind: role
version: v1
metadata: {name: db-host}
spec: {allow: {db_server_labels: {env: bench}}}
---
kind: role
version: v1
metadata: {name: db-ro}
spec: {allow: {db_labels: {env: bench}, db_users: [app_ro], db_names: [orders]}}
---
kind: database
version: v1
metadata: {name: orders, labels: {env: bench}}
spec: {protocol: postgres, uri: "127.0.0.1:$PGP"}
YAML
S create -f "$WORK/res.yaml" >/dev/null
tok() { S bots add "$1" --roles "$2" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }
PIN=$(S status --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ca_pin"])')
cfg() {
cat <<YAML
version: v1
auth_server: 127.0.0.1:$P
ca_pins: [$PIN]
onboarding: {join_method: token, token: $1}
storage: {type: directory, path: $WORK/$2-storage}
outputs:
YAML
}
{ cfg "$(tok server db-host)" server; cat <<YAML; } >"$WORK/server.yaml"
  - type: database-server
    service: orders
    names: [127.0.0.1]
    destination: {type: directory, path: $WORK/server, owner: postgres}
YAML
{ cfg "$(tok client db-ro)" client; cat <<YAML; } >"$WORK/client.yaml"
  - type: database
    service: orders
    username: app_ro
    database: orders
    destination: {type: directory, path: $WORK/client}
YAML
"$SIGIL" agent start --config "$WORK/server.yaml" 2>"$WORK/server.log" & PIDS+=($!)
for _ in $(seq 300); do [ -f "$WORK/server/crl.pem" ] && break; sleep 0.1; done
"$SIGIL" agent start --config "$WORK/client.yaml" --oneshot 2>"$WORK/client.log"

cat >>"$WORK/pg/data/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = '$WORK/server/tls.crt'
ssl_key_file = '$WORK/server/tls.key'
ssl_ca_file = '$WORK/server/client_ca.crt'
ssl_crl_file = '$WORK/server/crl.pem'
CONF
{ echo "hostssl all app_pw 127.0.0.1/32 scram-sha-256"; echo "hostssl all all 127.0.0.1/32 cert";
  cat "$WORK/pg/data/pg_hba.conf"; } >"$WORK/hba" && cat "$WORK/hba" >"$WORK/pg/data/pg_hba.conf"
scripts/test-postgres restart "$WORK/pg"

CERT="service=orders"
PW="host=127.0.0.1 port=$PGP user=app_pw dbname=orders sslmode=verify-full sslrootcert=$WORK/client/ca.crt"
export PGSERVICEFILE="$WORK/client/pg_service.conf" PGPASSWORD=bench-password
psql "$CERT" -tAc 'select 1' >/dev/null && psql "$PW" -tAc 'select 1' >/dev/null \
  || { echo "a connection failed; see $WORK"; exit 1; }

python3 - "$N" "$CERT" "$PW" <<'PY'
import statistics, subprocess, sys, time
n, cert, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = {"cert": [], "scram": []}
for _ in range(n):
    for name, conn in (("cert", cert), ("scram", pw)):
        s = time.perf_counter()
        subprocess.run(["psql", conn, "-tAc", "select 1"], check=True, stdout=subprocess.DEVNULL)
        t[name].append((time.perf_counter() - s) * 1000)
mc, mp = statistics.median(t["cert"]), statistics.median(t["scram"])
print(f"psql -c 'select 1', {n} connections each, alternating, both TLS verify-full:")
print(f"  password (scram-sha-256) : median {mp:.1f} ms")
print(f"  Sigil certificate + CRL  : median {mc:.1f} ms")
print(f"  ratio cert/password      : {mc/mp:.2f}")
PY
