#!/usr/bin/env bash
# What a WAV write costs the kernel (not a test): a small C program writes
# PIECE-byte pieces round robin to FILES files (as the daemon writes each
# call's rendered audio), TOTAL bytes a pass, and prints the CPU time per
# write. Run it right after a boot and again: on a virtual machine whose
# host backs guest memory at first touch, the first pass pays for every
# page the page cache takes (BENCHMARKS.md, "Where the CPU goes at 2,000
# calls, again"). TOUCH_GIB=N first fills and frees N GiB of memory once.
# MODE=mmap copies the pieces into a shared mapping of each file instead (1
# MiB windows, the file extended by ftruncate a window at a time): no system
# call a piece, a page fault every few (BENCHMARKS.md, "The floor under the
# live path").
#
# Usage: benches/page_cache_writes.sh [FILES] [PIECE] [TOTAL] [PASSES]
#        (default 2000 files, 6400 bytes, 1000000000 bytes, 2 passes)
# Needs: cc. Scratch: $BENCH_DIR (default /tmp/pbx-edge-writes).
set -euo pipefail
FILES=${1:-2000}; PIECE=${2:-6400}; TOTAL=${3:-1000000000}; PASSES=${4:-2}
DIR=${BENCH_DIR:-/tmp/pbx-edge-writes}
rm -rf "$DIR"; mkdir -p "$DIR"
cat > "$DIR/w.c" <<'C'
#include <fcntl.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
static double secs(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }
int main(int argc, char **argv) {
  int n = atoi(argv[1]), s = atoi(argv[2]);
  long total = atol(argv[3]);
  const char *d = argv[4];
  int mm = argc > 5 && !strcmp(argv[5], "mmap");
  const long win = 1L << 20;
  char **map = calloc(n, sizeof(char *));
  long *off = calloc(n, sizeof(long)), *base = calloc(n, sizeof(long));
  int *fd = malloc(n * sizeof(int));
  char p[4096], *buf = malloc(s);
  memset(buf, 7, s);
  for (int i = 0; i < n; i++) {
    snprintf(p, sizeof p, "%s/f%d", d, i);
    fd[i] = open(p, O_CREAT | O_TRUNC | O_RDWR, 0600);
    if (fd[i] < 0 || write(fd[i], buf, 44) != 44) { perror(p); return 1; }
    off[i] = 44;
  }
  long writes = total / s;
  struct rusage a, b;
  getrusage(RUSAGE_SELF, &a);
  for (long k = 0; k < writes; k++) {
    int i = k % n;
    if (!mm) {
      if (write(fd[i], buf, s) != s) { perror("write"); return 1; }
      continue;
    }
    if (!map[i] || off[i] + s > base[i] + win) {
      long nb = map[i] ? (off[i] & ~4095L) : 0;
      if (map[i]) munmap(map[i], win);
      if (ftruncate(fd[i], nb + win)) { perror("ftruncate"); return 1; }
      map[i] = mmap(0, win, PROT_READ | PROT_WRITE, MAP_SHARED, fd[i], nb);
      if (map[i] == MAP_FAILED) { perror("mmap"); return 1; }
      base[i] = nb;
    }
    memcpy(map[i] + (off[i] - base[i]), buf, s);
    off[i] += s;
  }
  getrusage(RUSAGE_SELF, &b);
  double cpu = secs(b.ru_stime) - secs(a.ru_stime) + secs(b.ru_utime) - secs(a.ru_utime);
  printf("%s files=%d piece=%d writes=%ld cpu=%.3f s per-write=%.2f us\n", mm ? "mmap" : "write", n, s, writes, cpu, cpu / writes * 1e6);
  return 0;
}
C
cat > "$DIR/touch.c" <<'C'
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
  for (int i = 0; i < atoi(argv[1]); i++) {
    char *p = malloc(1L << 30);
    if (!p) return 1;
    memset(p, 1, 1L << 30);
  }
  return 0;
}
C
cc -O2 -o "$DIR/w" "$DIR/w.c"
if [ -n "${TOUCH_GIB:-}" ]; then
  cc -O2 -o "$DIR/touch" "$DIR/touch.c"
  /usr/bin/time -f "touched $TOUCH_GIB GiB: %e s wall, %S s system" "$DIR/touch" "$TOUCH_GIB"
fi
for i in $(seq "$PASSES"); do
  rm -rf "$DIR/d"; mkdir "$DIR/d"
  printf 'pass %s: ' "$i"; "$DIR/w" "$FILES" "$PIECE" "$TOTAL" "$DIR/d" "${MODE:-write}"
done
rm -rf "$DIR/d"
