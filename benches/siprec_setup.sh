#!/usr/bin/env bash
# SIPREC call set-up rate and call end -> delivered (issue 14). Not a test.
#
# Part 1, set-up rate: for each rate R, `pbx-edge run` (release, pinned to
# core 0) as a SIPREC server on loopback, and siprec-load (pinned to core 1)
# sending CALLS two-stream SIPREC INVITEs (SDP + rs-metadata) at R per
# second, ACK, BYE (no media: set-up only). Reported: answered, refused,
# unanswered, the rate answered, INVITE -> 200 latency p50/p99/max, the
# daemon's CPU. Beside it, in the same run, the peer: Kamailio (Debian's)
# answering the same INVITEs with a stateless 200 and a fixed two-stream SDP
# (sl + textops: no dialog, no ports, no recording, no disk): what the SIP
# path alone costs on this machine.
#
# Part 2, call end -> delivered: DCALLS calls set up at 100/s, each with
# MEDIA seconds of RTP on both streams, hung up; the daemon delivers to a
# local multipart cloud (python3 http.server, threaded, 201 for every POST).
# For each recording: delivered_at (spool list --json) minus ended_at (the
# BYE's time, in its JSON); p50/p99/max.
#
# Usage: benches/siprec_setup.sh [RATE...]   (default 500 1000 2000)
# Env: CALLS (3000), DCALLS (1000), MEDIA (5), MAXPAR (cloud.max_parallel,
# default 2 as the daemon's), SPREAD (seconds over which the calls hang up,
# evenly; default 0: all at once), BENCH_DIR, PART=deliver (part 2 only).
# Needs: kamailio (for the peer row), python3, curl, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${*:-500 1000 2000}
CALLS=${CALLS:-3000}
DCALLS=${DCALLS:-1000}
MEDIA=${MEDIA:-5}
DIR=${BENCH_DIR:-/tmp/pbx-edge-setup}
cargo build --release -q -p pbx-edge -p pbx-testgen
T=${CARGO_TARGET_DIR:-target}
# BIN_OVERRIDE: another pbx-edge binary to measure (an A/B against a build
# of another commit; the load generator stays this tree's).
BIN=${BIN_OVERRIDE:-$(pwd)/$T/release/pbx-edge}
LOAD=$(pwd)/$T/release/siprec-load
ticks=$(getconf CLK_TCK)
rm -rf "$DIR"; mkdir -p "$DIR"

cpu_of() { awk '{print $14+$15}' "/proc/$1/stat"; }
wait_ready() {
  for _ in $(seq 100); do curl -sf "127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "daemon did not come up" >&2; return 1
}

row() { # label rate json cpu_s
  python3 - "$@" <<'PY'
import json, sys
label, rate, out, cpu = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
a = out["answered"]
print(f"| {label} | {rate} | {out['calls']} | {a} | {out['failed']} | {out['unanswered']} | "
      f"{a / max(out['setup_s'], 1e-9):.0f} | {out['setup_p50_ms']:.1f} | {out['setup_p99_ms']:.1f} | "
      f"{out['setup_max_ms']:.1f} | {cpu:.2f} |")
PY
}

if [ "${PART:-all}" != deliver ]; then
echo "SIPREC set-up: $CALLS calls per rate, no media; $(nproc) cores; $(date -u +%FT%TZ)"
echo
echo "| server | INVITEs/s sent | calls | answered 200 | refused | unanswered | answered/s | INVITE->200 p50 ms | p99 ms | max ms | server CPU s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for R in $RATES; do
  D=$DIR/setup-$R; mkdir -p "$D"
  cat > "$D/pbx-edge.toml" <<TOML
[spool]
dir = "$D/spool"
[health]
listen = "127.0.0.1:19476"
[sources.siprec]
listen = "127.0.0.1:15190"
rtp_ports = "20000-39999"
max_calls = 10000
TOML
  taskset -c 0 "$BIN" run --config "$D/pbx-edge.toml" 2>"$D/daemon.log" &
  PID=$!
  wait_ready 19476
  c0=$(cpu_of $PID)
  OUT=$(taskset -c 1 "$LOAD" --srs 127.0.0.1:15190 --calls "$CALLS" --seconds 0 --setup-rate "$R")
  c1=$(cpu_of $PID)
  kill -TERM $PID; wait $PID || true
  row "pbx-edge" "$R" "$OUT" "$(echo "($c1 - $c0) / $ticks" | bc -l)"

  if command -v kamailio >/dev/null; then
    MP=$( (ls -d /usr/lib/*/kamailio/modules /usr/lib/kamailio/modules 2>/dev/null || true) | head -1)
    cat > "$D/kamailio.cfg" <<KAM
#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=1
listen=udp:127.0.0.1:15192
mpath="$MP/"
loadmodule "sl.so"
loadmodule "textops.so"
request_route {
  if (is_method("ACK")) { exit; }
  if (is_method("INVITE")) {
    set_reply_body("v=0\r\no=k 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\na=recvonly\r\nm=audio 30002 RTP/AVP 0\r\na=recvonly\r\n", "application/sdp");
  }
  sl_send_reply("200", "OK");
}
KAM
    taskset -c 0 kamailio -f "$D/kamailio.cfg" -DD -E -P "$D/kamailio.pid" 2>"$D/kamailio.log" &
    KPID=$!
    sleep 1
    k0=0; for p in $(pgrep -g "$(ps -o pgid= $KPID | tr -d ' ')" kamailio 2>/dev/null || echo $KPID); do k0=$((k0 + $(cpu_of $p))); done
    OUT=$(taskset -c 1 "$LOAD" --srs 127.0.0.1:15192 --calls "$CALLS" --seconds 0 --setup-rate "$R")
    k1=0; for p in $(pgrep -g "$(ps -o pgid= $KPID | tr -d ' ')" kamailio 2>/dev/null || echo $KPID); do k1=$((k1 + $(cpu_of $p))); done
    kill -TERM $KPID; wait $KPID || true
    row "Kamailio, stateless 200" "$R" "$OUT" "$(echo "($k1 - $k0) / $ticks" | bc -l)"
  fi
done

fi

echo
echo "Call end -> delivered: $DCALLS calls, $MEDIA s of PCMU on both streams, set up at 100/s, hung up over ${SPREAD:-0} s; multipart to a local cloud, max_parallel ${MAXPAR:-2}"
D=$DIR/deliver; mkdir -p "$D/spool"
CLOUD_PORT=19481
python3 - "$CLOUD_PORT" > "$D/cloud.log" 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The answer's header and body leave in separate writes: with Nagle on,
    # the body waits for the client's delayed ACK (40 ms per request).
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        while n > 0:
            b = self.rfile.read(min(n, 1 << 20))
            if not b: break
            n -= len(b)
        body = b'{"id":"ok"}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
CPID=$!
echo "bench-token" > "$D/token"; chmod 600 "$D/token"
cat > "$D/pbx-edge.toml" <<TOML
[spool]
dir = "$D/spool"
retention = "1h"
[health]
listen = "127.0.0.1:19477"
[cloud]
url = "http://127.0.0.1:$CLOUD_PORT"
token_file = "$D/token"
protocol = "multipart"
max_parallel = ${MAXPAR:-2}
[sources.siprec]
listen = "127.0.0.1:15191"
rtp_ports = "20000-39999"
max_calls = 10000
TOML
taskset -c 0 "$BIN" run --config "$D/pbx-edge.toml" 2>"$D/daemon.log" &
PID=$!
wait_ready 19477
OUT=$(taskset -c 1 "$LOAD" --srs 127.0.0.1:15191 --calls "$DCALLS" --seconds "$MEDIA" --setup-rate 100 --end-spread "${SPREAD:-0}")
for _ in $(seq 600); do
  n=$("$BIN" spool list --json --config "$D/pbx-edge.toml" | python3 -c 'import json,sys; print(sum(1 for e in json.load(sys.stdin) if e["state"]=="delivered"))' 2>/dev/null || echo 0)
  [ "$n" -ge "$DCALLS" ] && break; sleep 0.5
done
"$BIN" spool list --json --config "$D/pbx-edge.toml" > "$D/list.json"
kill -TERM $PID; wait $PID || true
kill $CPID || true
python3 - "$D/list.json" "$D/spool" "$OUT" <<'PY'
import json, sys, datetime
entries = json.load(open(sys.argv[1]))
out = json.loads(sys.argv[3])
lat = []
for e in entries:
    if e["state"] != "delivered":
        continue
    j = json.load(open(f"{sys.argv[2]}/{e['id']}.json"))
    ended = datetime.datetime.fromisoformat(j["ended_at"].replace("Z", "+00:00")).timestamp() * 1000
    lat.append(e["delivered_at_ms"] - ended)
lat.sort()
p = lambda q: lat[round((len(lat) - 1) * q)] if lat else float("nan")
print(f"| calls answered | delivered | call end -> delivered p50 ms | p99 ms | max ms |")
print(f"|---|---|---|---|---|")
print(f"| {out['answered']} | {len(lat)} | {p(0.5):.0f} | {p(0.99):.0f} | {p(1.0):.0f} |")
PY
