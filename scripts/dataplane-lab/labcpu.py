# Shared by cpu.py and rq.py: CPU time of processes and of the kernel's packet threads.
import os

TCK = os.sysconf('SC_CLK_TCK')


def cpu(pid):
    """User + system CPU seconds of `pid` so far (0 if it is gone)."""
    try:
        f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
        return (int(f[11]) + int(f[12])) / TCK
    except OSError:
        return 0.0


def packet_threads():
    """The pids of ksoftirqd and threaded-NAPI kernel threads."""
    out = []
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            c = open(f'/proc/{p}/comm').read()
        except OSError:
            continue
        if c.startswith('ksoftirqd') or c.startswith('napi/'):
            out.append(int(p))
    return out
