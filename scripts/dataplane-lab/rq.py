#!/usr/bin/env python3
# rq.py NS URL SECS: wrk -t1 -c8, prints req/s and CPU-us per request (wrk + server + ksoftirqd + napi threads)
import os, sys, subprocess, resource
from labcpu import cpu, packet_threads
ns, url, secs = sys.argv[1], sys.argv[2], sys.argv[3]
srv = int(open(os.environ.get('MLAB_STATE', '/tmp/mlab') + '/serve.pid').read())
ks = packet_threads()
t = cpu
b0 = t(srv) + sum(t(p) for p in ks)
r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
out = subprocess.run(['chrt', '-f', '20', 'ip', 'netns', 'exec', ns, 'wrk', '-t1', '-c8', f'-d{secs}s', url], capture_output=True, text=True).stdout
r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
b1 = t(srv) + sum(t(p) for p in ks)
rps = float([l for l in out.splitlines() if l.startswith('Requests/sec')][0].split()[1])
n = rps * float(secs)
c = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime) + (b1 - b0)
print(f"rps={rps:.0f} cpu_us_per_req={c / n * 1e6:.1f}")
