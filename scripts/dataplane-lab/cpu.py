#!/usr/bin/env python3
# cpu.py NS ADDR SINKPID SECS: one __blast, reports Gbit/s and CPU-s/GB (sender + sink + ksoftirqd + napi threads)
import os, sys, subprocess, resource
from labcpu import cpu, packet_threads
ns, addr, sinkpid, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
kso = packet_threads()
t = cpu
b0 = t(sinkpid) + sum(t(p) for p in kso)
r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
out = subprocess.run(['chrt', '-f', '20', 'ip', 'netns', 'exec', ns, os.environ['MLAB_BENCH'], '__blast', addr, secs], capture_output=True, text=True).stdout
r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
b1 = t(sinkpid) + sum(t(p) for p in kso)
kv = dict(x.split('=') for x in out.split())
gb = int(kv['bytes']) / 1e9
snd = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
rcv = b1 - b0
print(f"gbps={float(kv['gbps']):.2f} snd={snd/gb:.3f} rcv+ksoft={rcv/gb:.3f} total={(snd+rcv)/gb:.3f} CPU-s/GB")
