"""Log-line latency of `pillsnap monitor`: from a training process's print to a WebSocket client, against a bare pipe.

A child process prints `--lines` lines (each holding its own `time.time()`), `--interval` s apart, with a tqdm-like
bar redrawn by carriage returns in between. Baseline: the same child read line by line from a plain pipe (what a
terminal sees). Monitor: the same child run under `pillsnap.monitor.main` and read by a WebSocket client as a browser
would; latency = arrival time - print time for every line. Target: every line within 1 s (p100 < 1 s); the monitor
batches output by 0.1 s, so a p50 near 0.05-0.1 s above the baseline is expected. Writes reports/bench_monitor.md.

Run: .venv/bin/python bench/bench_monitor.py [--lines 200] [--interval 0.02]
"""
from __future__ import annotations
import argparse, json, os, platform, re, statistics, subprocess, sys, time
from pathlib import Path
from pillsnap.outputs import kst_now, write_text

TARGET_S = 1.0
CHILD = '''
import sys, time
n, dt = int(sys.argv[1]), float(sys.argv[2])
time.sleep(2)
for i in range(n):
    sys.stdout.write(f"\\r {i % 100:3d}%|bar|"); sys.stdout.flush()
    print(f"\\nLINE {i} {time.time():.6f}", flush=True)
    time.sleep(dt)
'''
LINE = re.compile(r'LINE (\d+) (\d+\.\d+)')


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def baseline(n: int, dt: float) -> list[float]:
    "Latencies of the child's lines read from a plain pipe."
    p = subprocess.Popen([sys.executable, '-c', CHILD, str(n), str(dt)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    out = [time.time() - float(m[2]) for line in p.stdout if (m := LINE.search(line))]
    p.wait(); return out


def under_monitor(n: int, dt: float) -> list[float]:
    "Latencies of the child's lines received over the monitor's WebSocket."
    from websockets.sync.client import connect
    mon = subprocess.Popen([sys.executable, '-c', 'from pillsnap.monitor import main; main()', '--port', '0',
                            '--linger', '1', '--', sys.executable, '-c', CHILD, str(n), str(dt)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in mon.stdout:
        if m := re.search(r'http://([^/]+)/\?token=(\S+)', line): break
    lat, seen = [], set()
    with connect(f'ws://{m[1]}/ws?token={m[2]}', open_timeout=10) as ws:
        while len(seen) < n:
            msg = json.loads(ws.recv(timeout=30)); now = time.time()
            for line in msg.get('lines', []):
                if (mm := LINE.search(line)) and mm[1] not in seen: seen.add(mm[1]); lat.append(now - float(mm[2]))
    mon.wait(30); return lat


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--lines', type=int, default=200); ap.add_argument('--interval', type=float, default=0.02)
    a = ap.parse_args()
    base, mon = baseline(a.lines, a.interval), under_monitor(a.lines, a.interval)
    rows = [(name, len(x), statistics.median(x), pct(x, 0.95), max(x)) for name, x in (('bare pipe', base), ('monitor WebSocket', mon))]
    ok = max(mon) < TARGET_S
    md = ['# bench_monitor: log-line latency', '', f'{kst_now()} on {platform.node()} ({os.cpu_count()} cores, shared), '
          f'{a.lines} lines {a.interval} s apart with a redrawn bar between them.', '',
          '| path | lines | p50 (ms) | p95 (ms) | max (ms) |', '|---|---|---|---|---|',
          *[f'| {n} | {k} | {p50 * 1e3:.1f} | {p95 * 1e3:.1f} | {mx * 1e3:.1f} |' for n, k, p50, p95, mx in rows], '',
          f'Target: every line within {TARGET_S:.0f} s of its print: **{"met" if ok else "NOT met"}** '
          f'(max {max(mon) * 1e3:.0f} ms; p50 {(statistics.median(mon) - statistics.median(base)) * 1e3:+.0f} ms over the '
          'bare pipe, which the 0.1 s batching explains).', '', 'Run: `.venv/bin/python bench/bench_monitor.py`', '']
    out = Path(__file__).resolve().parent.parent/'reports'/'bench_monitor.md'
    write_text(out, '\n'.join(md)); print('\n'.join(md))


if __name__ == '__main__': main()
