"""Bounded load test of the REST API on loopback: a real uvicorn server (`pillsnap.serve.serve`, subprocess) on
127.0.0.1 and N concurrent POST /predict requests (httpx AsyncClient) on a real tiny run; latency p50/p95, throughput,
zero failed requests asserted. Baselines measured in the same run: the same predictor called directly in-process
(sequential, no HTTP) and GET /health over the same server (HTTP without inference). Figures to reports/bench_serve.md
and reports/bench_serve.png.

    .venv/bin/python bench/bench_serve.py [--run RUN_DIR] [--requests 200] [--mode combo]

Without --run, a tiny run is trained first (tests/eval_run.py: a few minutes on 2 cores)."""
import argparse, asyncio, io, os, socket, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KEY = 'bench-key'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start_server(run: Path, port: int, queue: int) -> subprocess.Popen:
    "`serve(run)` in a subprocess on 127.0.0.1:port; returns once /health answers."
    code = (f"from pillsnap.serve import serve; serve({str(run)!r}, port={port}, rate_limit=None, queue={queue}, "
            "log_level='warning')")
    proc = subprocess.Popen([sys.executable, '-c', code], env={**os.environ, 'PILLSNAP_API_KEYS': KEY})
    for _ in range(1200):
        try:
            if httpx.get(f'http://127.0.0.1:{port}/health').status_code == 200: return proc
        except httpx.TransportError: time.sleep(0.1)
        if proc.poll() is not None: raise SystemExit(f'server exited with {proc.returncode}')
    proc.terminate(); raise SystemExit('server did not start in 120 s')


async def fire(url: str, n: int, req) -> tuple[list[float], list, float]:
    "n concurrent requests made by `req(client)`: latencies (ms), failures, wall time (s)."
    lat, fails = [], []
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        async def one():
            t = time.perf_counter()
            try:
                r = await req(c)
                if r.status_code != 200: fails.append(f'{r.status_code} {r.text[:100]}')
            except Exception as e: fails.append(f'{type(e).__name__}: {e}')
            lat.append((time.perf_counter() - t) * 1000)
        t0 = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(n)])
        return lat, fails, time.perf_counter() - t0


def pct(x, q): return float(np.percentile(x, q))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run', type=Path); ap.add_argument('--requests', type=int, default=200)
    ap.add_argument('--mode', default='combo', choices=['single', 'combo'])
    ap.add_argument('--out', type=Path, default=ROOT/'reports')
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT/'tests'))
    from eval_run import build_run, split_files
    run = a.run or build_run(Path(tempfile.mkdtemp(prefix='bench_serve_')))
    path = split_files(run, 'test', a.mode)[0][0]
    data = path.read_bytes()
    from pillsnap.predict import TwoStagePredictor
    load = os.getloadavg()
    pr = TwoStagePredictor(run)
    n_classes = len(pr.codes)
    img = Image.open(io.BytesIO(data)).convert('RGB')
    pr.predict(img, mode=a.mode)  # warm-up
    direct = []
    for _ in range(20):
        t = time.perf_counter(); pr.predict(Image.open(io.BytesIO(data)).convert('RGB'), mode=a.mode)
        direct.append((time.perf_counter() - t) * 1000)
    del pr
    port = free_port(); url = f'http://127.0.0.1:{port}'
    proc = start_server(run, port, queue=a.requests + 8)
    try:
        h = {'X-API-Key': KEY}
        predict = lambda c: c.post('/predict', headers=h, files={'image': (path.name, data)}, data={'mode': a.mode})
        asyncio.run(fire(url, 4, predict))  # warm-up
        hl, hf, hw = asyncio.run(fire(url, a.requests, lambda c: c.get('/health')))
        pl, pf, pw = asyncio.run(fire(url, a.requests, predict))
    finally:
        proc.terminate(); proc.wait(30)
    assert not hf and not pf, f'failed requests: health {hf[:3]}, predict {pf[:3]}'
    d50, thr_direct, thr = pct(direct, 50), 1000 / np.mean(direct), a.requests / pw
    rows = [('direct TwoStagePredictor.predict (sequential, in-process)', len(direct), pct(direct, 50), pct(direct, 95), thr_direct, 0),
            (f'GET /health, {a.requests} concurrent', a.requests, pct(hl, 50), pct(hl, 95), a.requests / hw, len(hf)),
            (f'POST /predict ({a.mode}), {a.requests} concurrent', a.requests, pct(pl, 50), pct(pl, 95), thr, len(pf))]
    md = [f'# REST API load test (loopback)\n',
          f'A real uvicorn server (`pillsnap.serve.serve`, 1 inference worker, queue {a.requests + 8}, no rate limit) on '
          f'127.0.0.1; {a.requests} concurrent requests from one httpx AsyncClient; image `{path.name}` '
          f'({Image.open(path).size[0]}×{Image.open(path).size[1]}, {len(data):,} bytes), mode `{a.mode}`; '
          f'tiny run (classifier + YOLO detector, {n_classes} classes); {os.cpu_count()} CPU cores shared with the client '
          f'(load average {load[0]:.1f} before the run: other jobs were running on this machine).\n',
          '| what | requests | p50 ms | p95 ms | req/s | failed |', '|---|---|---|---|---|---|']
    md += [f'| {w} | {n} | {p50:.1f} | {p95:.1f} | {t:.1f} | {f} |' for w, n, p50, p95, t, f in rows]
    md += ['', f'- failed requests: **{len(pf)}** of {a.requests} (asserted zero)',
           f'- server throughput / direct throughput: **{thr / thr_direct:.2f}** (HTTP, multipart parsing, checks and '
           'queueing against the bare predictor; 1 worker, so latency under 200 concurrent requests is mostly queueing)',
           f'- p50 under load / direct p50: {pct(pl, 50) / d50:.1f}×; /health p50 under the same concurrency: {pct(hl, 50):.1f} ms']
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out/'bench_serve.md').write_text('\n'.join(md) + '\n')
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(pl, bins=40, alpha=.7, label=f'POST /predict ×{a.requests} concurrent')
    ax.axvline(d50, color='k', ls='--', label=f'direct predict p50 {d50:.0f} ms')
    ax.set_xlabel('latency (ms)'); ax.set_ylabel('requests'); ax.legend(); fig.tight_layout()
    fig.savefig(a.out/'bench_serve.png', dpi=110)
    print('\n'.join(md))


if __name__ == '__main__':
    main()
