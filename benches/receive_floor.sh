#!/usr/bin/env bash
# What receiving the RTP of N calls costs, and nothing else (not a test):
# the floor under the daemon's receive thread. A small C program binds
# 2*CALLS UDP ports on loopback with the daemon's socket options
# (SO_TIMESTAMPNS, SO_RXQ_OVFL), waits in edge-triggered epoll and reads
# every ready socket with recvmmsg in rounds of 40 ms, as
# src/sources/siprec/media/reader.rs does, and throws the datagrams away.
# A C sender on the other core sends one 172-byte datagram (20 ms of PCMU)
# to every port every 20 ms with sendmmsg. Printed: the receiver's CPU (%
# of one core, user and system, from its first datagram to its last) and
# the datagrams it read against those sent. MODE=one sends the same load to a single socket instead (the cost
# of the datagrams without the per-socket work). MODE=uring reads the
# sockets with io_uring instead (benches/uring_floor: one multishot recvmsg
# per socket into a provided buffer ring, the ring's deferred work run once
# a round; kernel 6.1+; needs cargo).
#
# Usage: benches/receive_floor.sh [CALLS] [SECONDS]   (default 2000 calls, 20 s)
# Needs: cc, taskset. Scratch: $BENCH_DIR (default /tmp/pbx-edge-recv-floor).
set -euo pipefail
CALLS=${1:-2000}; SECS=${2:-20}; MODE=${MODE:-ports}
DIR=${BENCH_DIR:-/tmp/pbx-edge-recv-floor}
mkdir -p "$DIR"
cat > "$DIR/floor.c" <<'C'
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#define BASE 31000
#define V 32
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double cpu(void) { struct rusage u; getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6; }
static void sleep_until(double t) { double d = t - now(); if (d > 0) { struct timespec s = { (time_t)d, (long)((d - (time_t)d) * 1e9) }; nanosleep(&s, 0); } }
static struct sockaddr_in addr(int port) { struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK); return a; }
int main(int argc, char **argv) {
  const char *mode = argv[1]; int ports = atoi(argv[2]); double secs = atof(argv[3]);
  int one = !strcmp(mode, "recv-one") || !strcmp(mode, "send-one");
  if (!strncmp(mode, "send", 4)) {
    int s = socket(AF_INET, SOCK_DGRAM, 0); char pkt[172]; memset(pkt, 0x80, sizeof pkt);
    struct sockaddr_in *to = calloc(ports, sizeof *to); struct mmsghdr *m = calloc(ports, sizeof *m);
    struct iovec io = { pkt, sizeof pkt };
    for (int i = 0; i < ports; i++) { to[i] = addr(one ? BASE : BASE + 2 * i);
      m[i].msg_hdr.msg_name = &to[i]; m[i].msg_hdr.msg_namelen = sizeof to[i]; m[i].msg_hdr.msg_iov = &io; m[i].msg_hdr.msg_iovlen = 1; }
    long sent = 0; double t0 = now();
    for (long tick = 1; now() - t0 < secs; tick++) {
      for (int i = 0; i < ports; ) { int k = sendmmsg(s, m + i, ports - i > 1024 ? 1024 : ports - i, 0); if (k <= 0) break; i += k; sent += k; }
      sleep_until(t0 + tick * 0.020);
    }
    printf("sent %ld\n", sent); return 0;
  }
  int n = one ? 1 : ports, ep = epoll_create1(0), on = 1, *fd = calloc(n, sizeof(int));
  for (int i = 0; i < n; i++) {
    struct sockaddr_in a = addr(BASE + 2 * i);
    fd[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    setsockopt(fd[i], SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    setsockopt(fd[i], SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof on);
    if (one) { int big = 64 << 20; setsockopt(fd[i], SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big); }
    if (bind(fd[i], (struct sockaddr *)&a, sizeof a)) { perror("bind"); return 1; }
    struct epoll_event e = { .events = EPOLLIN | EPOLLET, .data.u32 = i };
    epoll_ctl(ep, EPOLL_CTL_ADD, fd[i], &e);
  }
  static char data[V][2048]; static struct sockaddr_storage names[V]; static char cm[V][64];
  struct iovec io[V]; struct mmsghdr h[V]; struct epoll_event ev[1024];
  long got = 0; double c0 = 0, t0 = 0, last = 0, c1 = 0;
  for (;;) {
    double round = now();
    int k = epoll_wait(ep, ev, 1024, got ? 0 : 5000);
    if (k <= 0 && !got) { puts("nothing received"); return 1; }
    if (!got) { c0 = cpu(); t0 = now(); }
    long before = got;
    while (k > 0) {
      for (int j = 0; j < k; j++)
        for (;;) {
          for (int i = 0; i < V; i++) { io[i] = (struct iovec){ data[i], 2048 }; memset(&h[i], 0, sizeof h[i]);
            h[i].msg_hdr.msg_name = &names[i]; h[i].msg_hdr.msg_namelen = sizeof names[i];
            h[i].msg_hdr.msg_iov = &io[i]; h[i].msg_hdr.msg_iovlen = 1; h[i].msg_hdr.msg_control = cm[i]; h[i].msg_hdr.msg_controllen = 64; }
          int r = recvmmsg(fd[ev[j].data.u32], h, V, MSG_DONTWAIT, 0);
          if (r > 0) got += r;
          if (r < V) break;
        }
      if (k < 1024) break;
      k = epoll_wait(ep, ev, 1024, 0);
    }
    if (got > before) { last = now(); c1 = cpu(); }
    else if (now() - last > 1) break;
    sleep_until(round + 0.040);
  }
  double c = c1 - c0, t = last - t0;
  printf("| %s | %d | %ld | %.1f |\n", one ? "one socket" : "a socket per stream", ports, got, c / t * 100);
  return 0;
}
C
cc -O2 -o "$DIR/floor" "$DIR/floor.c"
recv=("$DIR/floor" recv $((CALLS * 2)) "$SECS"); send=send
case $MODE in
  one) recv=("$DIR/floor" recv-one $((CALLS * 2)) "$SECS"); send=send-one ;;
  uring)
    here=$(cd "$(dirname "$0")" && pwd)
    cargo build --release -q --manifest-path "$here/uring_floor/Cargo.toml" --target-dir "$DIR/target"
    recv=("$DIR/target/release/uring-floor" $((CALLS * 2))) ;;
  ports) ;;
  *) echo "MODE is ports, one or uring" >&2; exit 2 ;;
esac
taskset -c 0 "${recv[@]}" > "$DIR/out" &
R=$!
sleep 0.5
taskset -c 1 "$DIR/floor" "$send" $((CALLS * 2)) "$SECS" > "$DIR/sent"
wait $R
echo "| receiver | streams | datagrams read | receiver CPU (% of a core) | datagrams sent |"
echo "|---|---|---|---|---|"
sed "s/|\$/| $(awk '{print $2}' "$DIR/sent") |/" "$DIR/out"
