# Combination: caller = ts wrap + seq wrap at ~3 s, ptime 20/30/10/60 cycling every 2 s, 0-30 ms jitter,
# 3% loss, 2% duplicates (arriving 5-80 ms later), RTP padding/extension on some packets;
# callee starts 3 s after time zero, its first 3 packets arriving in reverse order, 20 ms, 0-30 ms jitter.
import sys; sys.path.insert(0, '/tmp/auditF')
from lib import *
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
pc = Pcap(1); tr = Truth(); rng = random.Random(seed)
T = 1000.0
c = Call(pc); c.invite(T, T + 1.0)
t0 = T + 1.1
A = Leg(pc, tr, 0, '10.0.0.1', 4000, '10.0.0.2', 5000, 0x1111, seed * 7 + 1, t0, seq0=65536 - 120, ts0=2**32 - 8000 * 3)
B = Leg(pc, tr, 1, '10.0.0.2', 5000, '10.0.0.1', 4000, 0x2222, seed * 7 + 2, t0)
lost = 0
t = 0.0; cyc = [20, 30, 10, 60]; k = 0
while t < 40.0:
    ms = cyc[int(t // 2) % 4]
    j = rng.uniform(0, 0.03) if t > 0 else 0
    drop = t > 0 and rng.random() < 0.03
    kwp = rng.choice([{}, {}, dict(pad=5), dict(ext=(0xBEDE, b'\x10\x01\x00\x00'))])
    if drop:
        A.send(t0 + t, ms * 8, send=False); lost += 1
        tr.items.pop() if False else None
    else:
        seq, ts = A.seq, A.ts
        pay = A.send(t0 + t, ms * 8, jitter=j, pkt_kw=kwp)
        if rng.random() < 0.02:
            pc.udp(t0 + t + j + rng.uniform(0.005, 0.08), A.src, A.sport, A.dst, A.dport, rtp(0, seq, ts, A.ssrc, pay, **kwp))
    t += ms / 1000
for i in range(int(37.0 / 0.02)):
    tn = 3.0 + 0.004 + i * 0.02
    if i < 3: arr = t0 + 3.004 + 0.045 - i * 0.01
    else: arr = t0 + tn + rng.uniform(0, 0.03)
    B.send(t0 + tn, 160, arrive=arr)
c.bye(t0 + 40.5)
pc.write('/tmp/auditF/t13_%d.pcap' % seed)
r = run(['/tmp/auditF/t13_%d.pcap' % seed], '/tmp/auditF/out13_%d' % seed)
print(r.stdout.strip(), r.stderr[-1500:])
for rec in load('/tmp/auditF/out13_%d' % seed):
    print(brief_meta(rec['meta']), 'truth: A sent', A.npk, 'lost', lost, ' B', B.npk)
    analyse(rec, tr)
