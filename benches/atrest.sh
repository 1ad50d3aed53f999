#!/usr/bin/env bash
# FLAC uplink and encryption at rest (issue 16): bytes saved by FLAC on
# speech calls and CPU per call-minute, beside `flac -5` on the same WAVs;
# CPU cost of encrypting and decrypting recordings per call-minute.
# The ignored bench_* tests of tests/atrest.rs do the work: espeak-ng speech,
# resampled by sox to 8 kHz, two parties taking turns (each silent while the
# other speaks), written by pbx-edge's own recording writer.
# CPU: getrusage (this thread for pbx-edge's code, children for flac).
# Profile: release (what the daemon runs). (The test profile optimises flacenc,
# chacha20, poly1305, md-5 and sha2 only; our own code and the AEAD glue stay debug.)
# Needs: espeak-ng, sox, flac.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -q --release --test atrest bench_ -- --ignored --nocapture --test-threads 1
