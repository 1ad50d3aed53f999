#!/usr/bin/env bash
# SIPREC capacity benchmark (not a test). For each N, starts `pbx-edge run`
# (release) as a SIPREC server on loopback, drives N concurrent two-stream
# PCMU SIPREC sessions at the real packet rate (siprec-load: one packet per
# stream every 20 ms) for S seconds, hangs up, and reports: sessions answered,
# RTP packets sent vs recorded (loss), the daemon's CPU (% of one core, and per
# call) and peak memory (VmHWM), per call.
#
# Usage: benches/siprec_capacity.sh [SECONDS] [N...]   (default 20 s; 250 500 1000 2000)
#        BIN_OVERRIDE=/path/to/pbx-edge measures another build (before/after runs)
#        PIN=1 runs the daemon on core 0 and the load generator on core 1
#        (taskset; the runs in BENCHMARKS.md before 2026-12-07 were unpinned)
# Memory: "peak RSS" is VmHWM (set-up bursts and the end's finishing
# included); "RSS per call" is the marginal memory of a call in progress:
# VmRSS three quarters into the media minus VmRSS of the idle daemon just
# before the calls, divided by the calls answered. "heap per call" is the
# same difference of the heap in use (`pbx_edge_heap_bytes`, the allocator's
# exact count, without the RSS's free pages and arenas).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}; shift || true
NS=${*:-250 500 1000 2000}
DIR=${BENCH_DIR:-/tmp/pbx-edge-capacity}
cargo build --release -q -p pbx-edge -p pbx-testgen
T=${CARGO_TARGET_DIR:-target}
BIN=${BIN_OVERRIDE:-$T/release/pbx-edge}
LOAD=$T/release/siprec-load
ticks=$(getconf CLK_TCK)

echo "siprec capacity: $SECS s of media per run; $(nproc) cores; $(date -u +%FT%TZ)"
echo
echo "| calls | answered | RTP sent | RTP recorded | lost | daemon CPU (% of a core) | CPU per call (% core) | peak RSS MiB | idle RSS MiB | mid-call RSS MiB | RSS per call KiB | idle heap MiB | mid-call heap MiB | heap per call KiB | sender lag ms | BYEs answered | engine behind, max s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for N in $NS; do
  rm -rf "$DIR/$N"; mkdir -p "$DIR/$N"
  # One even port a stream, two streams a call, and room for the cooling-off:
  # 20000-29999 up to 2,000 calls, wider above.
  HI=$(( N * 4 + 2000 > 10000 ? 20000 + N * 4 + 1999 : 29999 ))
  [ "$HI" -gt 65535 ] && HI=65535
  cat > "$DIR/$N/pbx-edge.toml" <<TOML
[spool]
dir = "$DIR/$N/spool"
[health]
listen = "127.0.0.1:19466"
[sources.siprec]
listen = "127.0.0.1:15090"
rtp_ports = "20000-$HI"
max_calls = 10000
TOML
  D_PIN=(); L_PIN=()
  if [ -n "${PIN:-}" ]; then D_PIN=(taskset -c 0); L_PIN=(taskset -c 1); fi
  "${D_PIN[@]}" $BIN run --config "$DIR/$N/pbx-edge.toml" 2>"$DIR/$N/daemon.log" &
  PID=$!
  for _ in $(seq 50); do curl -sf 127.0.0.1:19466/healthz >/dev/null 2>&1 && break; sleep 0.1; done
  idle=$(awk '/VmRSS/{print $2}' /proc/$PID/status)
  heap() { curl -s 127.0.0.1:19466/metrics | awk '/^pbx_edge_heap_bytes /{print $2}'; }
  idle_heap=$(heap)
  # VmRSS three quarters into the media (the set-up at 500 calls/s first).
  ( sleep "$(python3 -c "print($N / 500 + $SECS * 0.75)")"; awk '/VmRSS/{print $2}' /proc/$PID/status > "$DIR/$N/rss-mid"; heap > "$DIR/$N/heap-mid" ) &
  c0=$(awk '{print $14+$15}' /proc/$PID/stat)
  t0=$(date +%s.%N)
  OUT=$("${L_PIN[@]}" $LOAD --srs 127.0.0.1:15090 --calls "$N" --seconds "$SECS" --setup-rate 500)
  t1=$(date +%s.%N)
  c1=$(awk '{print $14+$15}' /proc/$PID/stat)
  hwm=$(awk '/VmHWM/{print $2}' /proc/$PID/status)
  behind=$(curl -s 127.0.0.1:19466/metrics | awk '/^pbx_edge_media_behind_seconds\{max="true"/{print $2}')
  answered=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["answered"])')
  # wait for every recording
  for _ in $(seq 100); do
    n=$(find "$DIR/$N/spool" -maxdepth 1 -name "*.json" 2>/dev/null | wc -l)
    [ "$n" -ge "$answered" ] && break; sleep 0.2
  done
  kill -TERM $PID; wait $PID || true
  mid=$(cat "$DIR/$N/rss-mid" 2>/dev/null || echo 0)
  mid_heap=$(cat "$DIR/$N/heap-mid" 2>/dev/null || echo 0)
  python3 - "$OUT" "$DIR/$N/spool" "$c0" "$c1" "$t0" "$t1" "$ticks" "$hwm" "$N" "${behind:--}" "$idle" "$mid" "${idle_heap:-0}" "${mid_heap:-0}" <<'PY'
import json, sys, glob
out = json.loads(sys.argv[1]); spool = sys.argv[2]
c0, c1, t0, t1, ticks, hwm, n = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
# Recorded: received and placed (a packet too late for its place, written
# as silence before it came, is not recorded).
rec = 0
for f in glob.glob(spool + "/*.json"):
    j = json.load(open(f))
    rec += sum(c.get("packets", 0) - c.get("late", 0) for c in j["channels"])
sent = out["packets_sent"]
cpu = (c1 - c0) / ticks / (t1 - t0) * 100
a = max(out["answered"], 1)
idle, mid = float(sys.argv[11]), float(sys.argv[12])
ih, mh = float(sys.argv[13] or 0), float(sys.argv[14] or 0)
print(f"| {n} | {out['answered']} | {sent} | {rec} | {sent - rec} | {cpu:.1f} | {cpu / a:.3f} | {hwm/1024:.0f} | {idle/1024:.1f} | {mid/1024:.0f} | {(mid - idle) / a:.1f} | {ih/2**20:.1f} | {mh/2**20:.1f} | {(mh - ih) / 1024 / a:.1f} | {out['sender_worst_lag_ms']} | {out['byes_answered']} | {sys.argv[10]} |")
PY
done
