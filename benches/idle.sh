#!/usr/bin/env bash
# The idle daemon (issue 14). Not a test.
#
# `pbx-edge run` on the packaged default configuration (config/pbx-edge.toml:
# SIPREC on loopback, health on loopback, no cloud), its spool in a scratch
# directory; after a 5 s settle, SECONDS_IDLE seconds with nothing to do:
# CPU (utime + stime of all threads), context switches of all threads (each
# is a wake-up), RSS at the end. Beside it in the same run, the peer:
# Debian's Kamailio (a SIP proxy with one UDP worker, also idle).
#
# Usage: benches/idle.sh [SECONDS_IDLE]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-60}
DIR=${BENCH_DIR:-/tmp/pbx-edge-idle}
# The binary as packaged (packaging/profile.env), in a target directory of
# its own so that everyday release builds are not rebuilt.
# shellcheck source=packaging/profile.env
. packaging/profile.env
export CARGO_TARGET_DIR=${PACKAGED_TARGET_DIR:-target/packaged}
# BIN_OVERRIDE: measure another binary instead (an A/B of two builds).
if [ -n "${BIN_OVERRIDE:-}" ]; then
  BIN=$BIN_OVERRIDE
else
  cargo build --release -q -p pbx-edge
  BIN=$(cd "$CARGO_TARGET_DIR" && pwd)/release/pbx-edge
fi
ticks=$(getconf CLK_TCK)
rm -rf "$DIR"; mkdir -p "$DIR"

cpu() { # all processes given: utime+stime ticks
  local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t
}
switches() { # "tid count" of every thread: voluntary + involuntary context switches
  for p in "$@"; do
    for s in /proc/"$p"/task/*/status; do
      awk -v f="$s" '/ctxt_switches/{n+=$2} END{split(f, a, "/"); print a[5], n}' "$s"
    done
  done
}
rss() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }

measure() { # label pids...
  local label=$1; shift
  sleep 5
  local c0 c1
  c0=$(cpu "$@"); switches "$@" > "$DIR/sw0"
  sleep "$IDLE"
  c1=$(cpu "$@"); switches "$@" > "$DIR/sw1"
  python3 - "$label" "$c0" "$c1" "$DIR/sw0" "$DIR/sw1" "$ticks" "$IDLE" "$(rss "$@")" "$#" <<'PY'
import sys
label, c0, c1, f0, f1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
ticks, idle, rss, n = map(float, sys.argv[6:])
read = lambda f: dict(map(int, l.split()) for l in open(f) if l.strip())
a, b = read(f0), read(f1)
# Threads alive at both ends: their switches in between; threads born in
# the window: all of theirs (threads that ended in it are not counted).
sw = sum(v - a.get(t, 0) for t, v in b.items())
cpu = (c1 - c0) / ticks
print(f"| {label} | {int(n)} | {cpu:.2f} | {cpu / idle * 100:.3f} % | {sw / idle:.2f} | {rss / 1024:.1f} |")
PY
}
echo "Idle for ${IDLE} s after a 5 s settle; $(nproc) cores; $(date -u +%FT%TZ)"
echo
echo "| process | processes | CPU s | CPU (% of a core) | wake-ups/s (context switches) | RSS MiB |"
echo "|---|---|---|---|---|---|"

# The spool goes where systemd would put it ($STATE_DIRECTORY).
cp config/pbx-edge.toml "$DIR/pbx-edge.toml"
export STATE_DIRECTORY="$DIR/spool"
mkdir -p "$STATE_DIRECTORY"
"$BIN" check-config --config "$DIR/pbx-edge.toml" >/dev/null
"$BIN" run --config "$DIR/pbx-edge.toml" 2>"$DIR/daemon.log" >/dev/null &
PID=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:9466/healthz >/dev/null 2>&1 && break; sleep 0.1; done
measure "pbx-edge (default config)" $PID
kill -TERM $PID; wait $PID || true

if command -v kamailio >/dev/null; then
  cat > "$DIR/kamailio.cfg" <<KAM
#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=1
listen=udp:127.0.0.1:15292
mpath="$( (ls -d /usr/lib/*/kamailio/modules /usr/lib/kamailio/modules 2>/dev/null || true) | head -1)/"
loadmodule "sl.so"
request_route { sl_send_reply("200", "OK"); }
KAM
  kamailio -f "$DIR/kamailio.cfg" -DD -E -P "$DIR/kamailio.pid" 2>"$DIR/kamailio.log" &
  KPID=$!
  sleep 1
  PIDS=$(pgrep -f "$DIR/kamailio.cfg" | tr '\n' ' ')
  # shellcheck disable=SC2086
  measure "Kamailio 5.6 (sl only, 1 UDP worker)" $PIDS
  kill -TERM $KPID; wait $KPID || true
fi
