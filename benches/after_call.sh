#!/usr/bin/env bash
# Wake-ups of an otherwise idle daemon after one SIPREC call (issue 14). Not
# a test.
#
# For each binary given (default: this tree's release build): `pbx-edge run`
# on the packaged default configuration (SIPREC on 127.0.0.1:5090), one
# two-stream SIPREC call of 2 s (`siprec-load --calls 1 --seconds 2`), then
# context switches of all its threads (each is a wake-up) in WINDOWS windows
# of 10 s, the first starting 2 s after the call's BYE was answered. The SIP
# transactions of a call are kept 32 s after its BYE (RFC 3261 timer J) and
# its RTP ports stay open 10 s, so the windows cover all the work a call
# leaves behind, then the idle daemon.
#
# Usage: benches/after_call.sh [BINARY...]    (WINDOWS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOWS=${WINDOWS:-5}
DIR=${BENCH_DIR:-/tmp/pbx-edge-after-call}
cargo build --release -q -p pbx-testgen
LOAD=${CARGO_TARGET_DIR:-target}/release/siprec-load
if [ $# -eq 0 ]; then
  cargo build --release -q -p pbx-edge
  set -- "${CARGO_TARGET_DIR:-target}/release/pbx-edge"
fi
switches() { # "tid count" of every thread: voluntary + involuntary context switches
  for s in /proc/"$1"/task/*/status; do
    awk -v f="$s" '/ctxt_switches/{n+=$2} END{split(f, a, "/"); print a[5], n}' "$s" 2>/dev/null || true
  done
}
# Switches between two snapshots: threads alive at both ends, their
# difference; threads born in between, all of theirs (threads that ended in
# between are not counted: blocking-pool threads end after 10 s idle).
between() {
  python3 - "$1" "$2" <<'PY'
import sys
read = lambda f: dict(map(int, l.split()) for l in open(f) if l.strip())
a, b = read(sys.argv[1]), read(sys.argv[2])
print(sum(v - a.get(t, 0) for t, v in b.items()))
PY
}
echo "Wake-ups after one 2 s SIPREC call, per 10 s window; $(nproc) cores; $(date -u +%FT%TZ)"
echo
header="| binary |"; rule="|---|"
for w in $(seq "$WINDOWS"); do header="$header $((w * 10 - 8))-$((w * 10 + 2)) s |"; rule="$rule---|"; done
echo "$header"; echo "$rule"
for BIN in "$@"; do
  rm -rf "$DIR"; mkdir -p "$DIR"
  cp config/pbx-edge.toml "$DIR/pbx-edge.toml"
  export STATE_DIRECTORY="$DIR/spool"
  mkdir -p "$STATE_DIRECTORY"
  "$BIN" run --config "$DIR/pbx-edge.toml" 2>"$DIR/daemon.log" >/dev/null &
  PID=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:9466/healthz >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 2
  "$LOAD" --srs 127.0.0.1:5090 --calls 1 --seconds 2 >"$DIR/load.json"
  grep -q '"answered":1,' "$DIR/load.json" || { echo "the call was not answered: $(cat "$DIR/load.json")" >&2; exit 1; }
  sleep 2
  row="| $BIN |"
  switches $PID >"$DIR/sw0"
  for _ in $(seq "$WINDOWS"); do
    sleep 10
    switches $PID >"$DIR/sw1"
    row="$row $(between "$DIR/sw0" "$DIR/sw1") |"
    mv "$DIR/sw1" "$DIR/sw0"
  done
  echo "$row"
  kill -TERM $PID; wait $PID || true
done
