#!/usr/bin/env bash
# Upload benchmark (not a test): pbx-edge's delivery task next to curl, the
# same recordings to the same local reference receiver (tests/common/receiver.rs)
# in the same run, for both protocols, with small and large files:
#   - pbx-edge: the delivery task alone (the `child_delivery_process` mode of
#     the tests/delivery.rs binary, release build) delivering a spool until it
#     is empty: tus (4 MiB PATCH chunks, sha256 Upload-Checksum per chunk,
#     durable SQLite checkpoint per chunk, POST /v1/calls) or multipart;
#     max_parallel 2.
#   - curl: the same files, 2 at a time (xargs -P2): multipart = one
#     `curl -F` per recording; tus = creation POST, ONE PATCH of the whole
#     file (no chunks, no checksum), then POST /v1/calls (JSON + "upload"
#     added by jq).
# Prints wall and CPU seconds, MiB/s, and peak RSS, and appends a section to
# BENCHMARKS.md.
#
# Usage: benches/upload.sh [SMALL_COUNT] [LARGE_COUNT]   (default 200 x 1 MiB, 4 x 100 MiB)
# Environment (all optional):
#   PBX_BIN=path       the delivery test binary to use (else built here, release)
#   BASELINE_BIN=path  another build's delivery test binary, measured in the same
#                      run right after each pbx-edge row ("pbx-edge <proto> (baseline)")
#   SETS="small large" PROTOS="tus multipart" REPEAT=1   what to run, how often
#   NO_APPEND=1        print the rows only (BENCHMARKS.md is left alone)
#   PIN=1              the receiver on core 1, every uploader (pbx-edge, curl) on
#                      core 0 (taskset): unpinned, the two fill both cores and the
#                      wall time follows whichever the scheduler favours
# Needs: curl, jq, python3, /usr/bin/time. Scratch: $BENCH_DIR (default /tmp/pbx-edge-upload-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${1:-200}
LARGE=${2:-4}
DIR=${BENCH_DIR:-/tmp/pbx-edge-upload-bench}
rm -rf "$DIR"; mkdir -p "$DIR"

BIN=${PBX_BIN:-}
[ -n "$BIN" ] || BIN=$(cargo test --release -q -p pbx-edge --test delivery --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("reason")=="compiler-artifact" and m.get("target",{}).get("name")=="delivery" and m.get("executable"): print(m["executable"])' | tail -1)
[ -x "$BIN" ] || { echo "could not build the delivery test binary" >&2; exit 1; }

# The receiver, in its own process.
# Its uploads land in a temporary directory inside $DIR (removed at the end:
# a killed receiver cannot remove its own, and each run leaves gigabytes).
mkdir -p "$DIR/rx-tmp"
RX_PIN=(); UP_PIN=""
if [ -n "${PIN:-}" ]; then RX_PIN=(taskset -c 1); UP_PIN="taskset -c 0"; fi
TMPDIR="$DIR/rx-tmp" PBX_BENCH_SECONDS=3600 "${RX_PIN[@]}" "$BIN" bench_receiver --exact --ignored --nocapture >"$DIR/rx.out" 2>&1 &
RX=$!
trap 'kill $RX 2>/dev/null || true; rm -rf "$DIR/rx-tmp" "$DIR/spool"' EXIT
for _ in $(seq 100); do grep -q 'RECEIVER http' "$DIR/rx.out" && break; sleep 0.1; done
URL=$(sed -n 's/.*RECEIVER \(http\)/\1/p' "$DIR/rx.out" | head -1)
[ -n "$URL" ] || { echo "receiver did not start" >&2; cat "$DIR/rx.out" >&2; exit 1; }
echo "receiver at $URL" >&2

make_set() { # name count bytes
  PBX_BENCH_DIR="$DIR/$1" PBX_BENCH_FILES=$2 PBX_BENCH_BYTES=$3 PBX_BENCH_PREFIX="$1-" \
    "$BIN" bench_make_recordings --exact --ignored --quiet >/dev/null 2>&1
}

ROWS=()
# measure LABEL SET BYTES_TOTAL -- command...
measure() {
  local label=$1 set=$2 total=$3; shift 4
  local t0 t1 out
  # The receiver's writes of the last run flushed first: its writeback
  # must not fall into the next uploader's time.
  sync
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S %M' -o "$DIR/time.out" $UP_PIN bash -c "$*" >/dev/null 2>>"$DIR/err.log"
  t1=$(date +%s.%N)
  read -r u s m <"$DIR/time.out"
  out=$(python3 -c "w=$t1-$t0; c=$u+$s; b=$total/1048576; print(f'| $label | $set | {w:.2f} | {c:.2f} | {b/w:.1f} | {$m/1024:.0f} |')")
  echo "$out" >&2
  ROWS+=("$out")
}

prep_spool() { rm -rf "$DIR/spool"; cp -r "$DIR/$1" "$DIR/spool"; sync; }
pbx() { # protocol [binary]
  PBX_DELIVERY_CHILD="$DIR/spool" PBX_DELIVERY_URL="$URL" PBX_DELIVERY_PROTOCOL=$1 \
    PBX_DELIVERY_EXIT_WHEN_EMPTY=1 PBX_DELIVERY_PARALLEL=2 PBX_DELIVERY_CHUNK=$((4 << 20)) \
    "${2:-$BIN}" child_delivery_process --exact --nocapture --test-threads=1
}

curl_multipart_one() { # json wav key
  curl -sf -o /dev/null -H "Idempotency-Key: $3" \
    -F "metadata=@$1;type=application/json" -F "audio=@$2;type=audio/wav" "$URL/v1/calls"
}
curl_tus_one() { # json wav key
  local len loc
  len=$(stat -c %s "$2")
  loc=$(curl -sf -D - -o /dev/null -X POST -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $len" \
    -H "Upload-Metadata: filename $(printf %s "$3.wav" | base64 -w0),recording_id $(printf %s "$3" | base64 -w0)" \
    "$URL/v1/uploads" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  curl -sf -o /dev/null -X PATCH -H 'Tus-Resumable: 1.0.0' -H 'Content-Type: application/offset+octet-stream' \
    -H 'Upload-Offset: 0' --data-binary "@$2" "$URL$loc"
  jq -c --arg u "$loc" '. + {upload: $u}' "$1" \
    | curl -sf -o /dev/null -H 'Content-Type: application/json' -H "Idempotency-Key: $3" --data-binary @- "$URL/v1/calls"
}
export -f curl_multipart_one curl_tus_one

curl_set() { # set protocol
  ls "$DIR/$1"/*.json | sed 's/\.json$//' | \
    xargs -P2 -I{} bash -c "curl_$2_one {}.json {}.wav curl-$2-\$(basename {})"
}
export -f pbx curl_set
export URL DIR BIN

BASELINE_BIN=${BASELINE_BIN:-}
export BASELINE_BIN
for name in ${SETS:-small large}; do
  case $name in
    small) count=$SMALL bytes=$((1 << 20)) ;;
    large) count=$LARGE bytes=$((100 << 20)) ;;
    *) echo "unknown set $name" >&2; exit 2 ;;
  esac
  make_set "$name" "$count" "$bytes"
  total=$(du -cb "$DIR/$name"/*.wav | tail -1 | cut -f1)
  setlabel="$count x $((bytes >> 20)) MiB"
  for _ in $(seq "${REPEAT:-1}"); do
    for proto in ${PROTOS:-tus multipart}; do
      prep_spool "$name"
      measure "pbx-edge $proto" "$setlabel" "$total" -- pbx "$proto"
      if [ -n "$BASELINE_BIN" ]; then
        prep_spool "$name"
        measure "pbx-edge $proto (baseline)" "$setlabel" "$total" -- pbx "$proto" "$BASELINE_BIN"
      fi
      measure "curl $proto" "$setlabel" "$total" -- curl_set "$name" "$proto"
    done
  done
done
CALLS=$(grep '^CALLS ' "$DIR/rx.out" | tail -1)
echo "receiver: $CALLS" >&2
[ -z "${NO_APPEND:-}" ] || exit 0

{
  echo
  echo "## Upload throughput and memory (issue 4)"
  echo
  echo 'Command: `benches/upload.sh '"$SMALL $LARGE"'` (run of '"$(date -u +%Y-%m-%d)"', release build,'
  echo 'receiver = tests/common/receiver.rs in its own process on 127.0.0.1, writing every upload'
  echo 'to disk and hashing it; 2 uploads at a time on both sides).'
  echo
  echo '| uploader | files | wall s | CPU s | MiB/s | peak RSS MiB |'
  echo '|---|---|---|---|---|---|'
  printf '%s\n' "${ROWS[@]}"
  echo
  echo '- pbx-edge tus: 4 MiB PATCH chunks, each with a sha256 `Upload-Checksum` (the file is'
  echo '  read twice: once to hash the chunk, once to send it) and a durable (fsynced) SQLite'
  echo '  checkpoint; curl tus sends each file in ONE PATCH without checksum, so it is an upper'
  echo '  bound rather than an equal comparison. Multipart is the same request on both sides.'
  echo '- Memory: pbx-edge streams bodies from disk in 256 KiB pieces; its peak RSS is the same'
  echo '  for 1 MiB and 100 MiB files (the rows "pbx-edge ..." above), i.e. independent of file size.'
  echo '  (`curl --data-binary @file`, used for the tus PATCH, reads the whole file into memory.)'
  echo '- Small files: per-process start-up of curl (and jq) is part of the curl rows; the'
  echo '  pbx-edge rows include its 100 ms spool scan interval.'
} >>BENCHMARKS.md
echo "appended to BENCHMARKS.md" >&2
