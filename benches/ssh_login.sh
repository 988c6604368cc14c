#!/usr/bin/env bash
# SSH login cost: `ssh HOST true` against one real sshd, with a plain
# authorized key vs. with a Sigil user certificate (TrustedUserCAKeys, the
# KRL, and the `sigil ssh principals` command from the ssh-host output).
# Same sshd, same client, same run; alternating, so drift hits both alike.
# Needs root (sshd) and a built sigil. Prints medians and their ratio.
#   sudo benches/ssh_login.sh [SIGIL_BINARY] [N=60]
set -euo pipefail
cd "$(dirname "$0")/.."
SIGIL_SRC=${1:-${CARGO_TARGET_DIR:-target}/release/sigil}
N=${2:-60}
[ "$(id -u)" -eq 0 ] || { echo "run as root (sshd)"; exit 2; }
[ -x /usr/sbin/sshd ] || { echo "install openssh-server"; exit 2; }

WORK=$(mktemp -d /var/tmp/sigil-ssh-bench.XXXXXX)
# sshd accepts an AuthorizedPrincipalsCommand only in root-owned,
# non-writable directories: /var/tmp is world-writable, so keep it under /var/lib.
SAFE=$(mktemp -d /var/lib/sigil-ssh-bench.XXXXXX)
chmod 755 "$SAFE"
install -m 0755 "$SIGIL_SRC" "$SAFE/sigil"
SIGIL="$SAFE/sigil"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK" "$SAFE"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=$(port); PUB=$(port); SP=$(port)

"$SIGIL" auth start --data-dir "$WORK/data" --listen 127.0.0.1:$P --public-listen 127.0.0.1:$PUB \
  --cluster-name bench.test 2>"$WORK/auth.log" & PIDS+=($!)
for _ in $(seq 100); do [ -S "$WORK/data/admin.sock" ] && break; sleep 0.1; done
S() { "$SIGIL" --data-dir "$WORK/data" "$@"; }
cat >"$WORK/roles.yaml" <<YAML
kind: role
version: v1
metadata: {name: ssh-host}
spec: {allow: {ssh_host_principals: [localhost]}}
---
kind: role
version: v1
metadata: {name: deploy}
spec: {allow: {logins: [root], node_labels: {env: bench}}}
YAML
S create -f "$WORK/roles.yaml" >/dev/null
tok() { S bots add "$1" --roles "$2" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }
PIN=$(S status --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ca_pin"])')
HT=$(tok host ssh-host); CT=$(tok client deploy)
cat >"$WORK/host.yaml" <<YAML
version: v1
auth_server: 127.0.0.1:$P
ca_pins: [$PIN]
onboarding: {join_method: token, token: $HT}
storage: {type: directory, path: $SAFE/storage}
outputs:
  - type: ssh-host
    principals: [localhost]
    labels: {env: bench}
    destination: {type: directory, path: $SAFE/ssh}
YAML
"$SIGIL" agent start --config "$WORK/host.yaml" 2>"$WORK/host.log" & PIDS+=($!)
for _ in $(seq 300); do [ -f "$SAFE/ssh/sshd_config" ] && break; sleep 0.1; done
printf '%s\n' "$CT" >"$WORK/token"; chmod 600 "$WORK/token"
"$SIGIL" agent start --auth-server 127.0.0.1:$P --ca-pin "$PIN" --token-path "$WORK/token" \
  --storage "$WORK/client-storage" --output identity:"$WORK/id" --oneshot 2>/dev/null

# The plain-key baseline: a key in authorized_keys, host key pinned in known_hosts.
ssh-keygen -q -t ed25519 -N '' -f "$WORK/plain"
mkdir -p /run/sshd "$WORK/keys"; cp "$WORK/plain.pub" "$WORK/keys/root"
cat >"$WORK/sshd_config" <<CFG
Include $SAFE/ssh/sshd_config
Port $SP
ListenAddress 127.0.0.1
PidFile $WORK/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $WORK/keys/%u
StrictModes no
CFG
/usr/sbin/sshd -D -f "$WORK/sshd_config" -E "$WORK/sshd.log" & PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SP) 2>/dev/null && break; sleep 0.1; done
echo "[localhost]:$SP $(cat "$SAFE/ssh/ssh_host_ed25519_key.pub")" >"$WORK/plain_known"

plain() { ssh -p "$SP" -F /dev/null -i "$WORK/plain" -o IdentitiesOnly=yes -o BatchMode=yes \
  -o UserKnownHostsFile="$WORK/plain_known" -o StrictHostKeyChecking=yes \
  -o HostKeyAlgorithms=ssh-ed25519 root@localhost true; }
sigil_cert() { ssh -p "$SP" -F "$WORK/id/ssh_config" -o BatchMode=yes root@localhost true; }
plain && sigil_cert || { echo "a login failed; see $WORK"; tail -20 "$WORK/sshd.log"; exit 1; }

python3 - "$N" <<'PY' "$SP" "$WORK" "$SAFE"
import statistics, subprocess, sys, time
n, port, work, safe = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
plain = ["ssh", "-p", port, "-F", "/dev/null", "-i", f"{work}/plain", "-o", "IdentitiesOnly=yes",
         "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={work}/plain_known",
         "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlgorithms=ssh-ed25519", "root@localhost", "true"]
cert = ["ssh", "-p", port, "-F", f"{work}/id/ssh_config", "-o", "BatchMode=yes", "root@localhost", "true"]
t = {"plain": [], "cert": []}
for _ in range(n):
    for name, cmd in (("plain", plain), ("cert", cert)):
        s = time.perf_counter()
        subprocess.run(cmd, check=True)
        t[name].append((time.perf_counter() - s) * 1000)
mp, mc = statistics.median(t["plain"]), statistics.median(t["cert"])
print(f"ssh true, {n} logins each, alternating:")
print(f"  plain authorized key : median {mp:.1f} ms")
print(f"  Sigil certificate    : median {mc:.1f} ms")
print(f"  ratio cert/plain     : {mc/mp:.2f}")
PY
