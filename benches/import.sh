#!/usr/bin/env bash
# Import throughput benchmark (not a test): generates a large capture of N
# concurrent calls of S seconds (PCMU, 20 ms packets, speech-like audio on both
# legs), then, in the same run, measures
#   1. pbx-edge import      (SIP dialogs, RTP demux, jitter/timeline, decode, WAV + JSON files)
#   2. tshark               (dissecting the same capture and extracting every RTP
#                            stream's SSRC, sequence number and payload)
# and prints CPU seconds, peak RSS, packets per CPU second, and seconds of call
# audio per CPU second.
#
# Usage: benches/import.sh [CALLS] [SECONDS]      (default 500 calls x 120 s)
#        BASELINE=/path/to/older/pbx-edge benches/import.sh ...   also measures
#        an older build on the same capture, in the same run (before/after).
# Needs: tshark, /usr/bin/time. Scratch space: $BENCH_DIR (default /tmp/pbx-edge-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-500}
SECS=${2:-120}
DIR=${BENCH_DIR:-/tmp/pbx-edge-bench}
mkdir -p "$DIR"
CAP="$DIR/bench-${CALLS}x${SECS}.pcap"

cargo build --release -q -p pbx-edge -p pbx-testgen
if [ ! -f "$CAP" ]; then
  echo "generating $CAP ..." >&2
  ./target/release/pbx-testgen --calls "$CALLS" --seconds "$SECS" --codec pcmu --stagger-ms 50 --out "$CAP"
fi
PKTS=$(python3 - "$CAP" <<'PY'
import os, sys
# classic pcap: count records by walking headers
f = open(sys.argv[1], 'rb'); f.seek(24); n = 0
while True:
    h = f.read(16)
    if len(h) < 16: break
    incl = int.from_bytes(h[8:12], 'little'); f.seek(incl, 1); n += 1
print(n)
PY
)
SIZE=$(stat -c %s "$CAP")
AUDIO_S=$((CALLS * SECS))

measure() { # name, command...
  local name=$1; shift
  local file=${name//\//_}   # a name may hold a path's slashes
  local t="$DIR/time-$file.txt"
  /usr/bin/time -f "%U %S %e %M" -o "$t" "$@" >"$DIR/stdout-$file.txt" 2>"$DIR/stderr-$file.txt"
  read -r user sys wall rss < "$t"
  python3 - "$name" "$user" "$sys" "$wall" "$rss" "$PKTS" "$AUDIO_S" <<'PY'
import sys
name, user, sys_, wall, rss, pkts, audio = sys.argv[1], *map(float, sys.argv[2:])
cpu = user + sys_
print(f"| {name} | {cpu:.2f} | {wall:.2f} | {rss/1024:.0f} | {pkts/cpu:,.0f} | {audio/cpu:,.0f}x |")
PY
}

echo "capture: $CALLS calls x $SECS s PCMU, $PKTS packets, $((SIZE/1048576)) MiB; $(nproc) cores; $(date -u +%FT%TZ)"
echo
echo "| tool | CPU s | wall s | peak RSS MiB | packets / CPU s | call audio / CPU s |"
echo "|---|---|---|---|---|---|"
rm -rf "$DIR/out"
measure "pbx-edge import" ./target/release/pbx-edge import "$CAP" --out "$DIR/out" --quiet
if [ -n "${BASELINE:-}" ]; then
  rm -rf "$DIR/out-baseline"
  measure "baseline ($(basename "$(dirname "$(dirname "$(dirname "$BASELINE")")")"))" \
    "$BASELINE" import "$CAP" --out "$DIR/out-baseline" --quiet
  rm -rf "$DIR/out-baseline"
fi
measure "tshark RTP extraction" tshark -r "$CAP" -n -Y rtp -T fields -e rtp.ssrc -e rtp.seq -e rtp.payload
echo
echo "pbx-edge: $(tail -1 "$DIR/stdout-pbx-edge import.txt") $(ls "$DIR/out"/*.wav | wc -l) recordings, $(du -sm "$DIR/out" | cut -f1) MiB written"
