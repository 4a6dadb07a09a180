"""CPU batch-1 latency per image, PyTorch vs ONNX Runtime, through `TwoStagePredictor` (file read to pills).

Targets (issue 10): single mode tiny p95 < 50 ms; s profile (tf_efficientnetv2_s at 384, random init) p95 < 200 ms;
combo mode tiny p95 reported with the number of pills. The bare baseline measured in the same run is the model's own
forward pass on a ready tensor (PyTorch), so the predictor's overhead shows as a ratio.
Writes reports/bench_latency.md and reports/bench_latency.png. Usage:
    .venv/bin/python bench/bench_latency.py [--run RUN_DIR] [--n 60] [--work DIR]
Without --run it builds a small synthetic Stage 3 set and trains a tiny run first (a few minutes on 2 cores).
"""
import argparse, json, os, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def build_run(work: Path) -> Path:
    "A tiny two-stage run on a synthetic Stage 3 max_combo set."
    from pillsnap.stage import synth_manifest
    from pillsnap.train import train
    if (work/'run'/'classifier'/'best.pt').exists(): return work/'run'
    synth_manifest(work, classes=6, per_class=6, combos=48, scale=0.25, samples=400)
    train(work/'manifest', out=work/'run', epochs=6, detector_epochs=25, workers=0, echo=False,
          detector_kw=dict(imgsz=128, batch=8))
    return work/'run'


def s_profile_checkpoint(work: Path, classes: int = 50, size: int = 384) -> Path:
    "A random-init tf_efficientnetv2_s classifier checkpoint at `size` in PillSnap's format (latency only)."
    import torch
    from pillsnap.classifier import create_classifier, save_checkpoint
    path = work/'s_profile.pt'
    if path.exists(): return path
    m = create_classifier('tf_efficientnetv2_s', classes)
    cl = [dict(index=i, code=f'K-{i:06d}', class_id=i, name=f'drug {i}') for i in range(classes)]
    tr = dict(img_size=size, mean=[0.5] * 3, std=[0.5] * 3, crop_margin=0.1)
    save_checkpoint(dict(model=m.state_dict(), ema=None, classes=cl, transform=tr, class_map_hash=None,
                         config=dict(model='tf_efficientnetv2_s', cache_size=size)), path)
    return path


def timed(fn, n: int, warmup: int = 5) -> np.ndarray:
    for _ in range(warmup): fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def stats(ms: np.ndarray) -> dict:
    p = np.percentile(ms, [50, 95, 99])
    return dict(p50=round(float(p[0]), 2), p95=round(float(p[1]), 2), p99=round(float(p[2]), 2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--run', type=Path, default=None)
    ap.add_argument('--n', type=int, default=60)
    ap.add_argument('--work', type=Path, default=None)
    a = ap.parse_args()
    import torch
    from pillsnap.evaluate import device_name
    from pillsnap.export import export, export_classifier
    from pillsnap.manifest import read_manifest
    from pillsnap.predict import TwoStagePredictor, run_files
    from pillsnap.yolo import manifest_data_root
    work = a.work or Path(tempfile.mkdtemp(prefix='pillsnap-bench-lat-'))
    t0, load0 = time.time(), os.getloadavg()
    run = a.run or build_run(work)
    manifest = Path(json.loads((run/'run.json').read_text())['params']['manifest_dir'])
    df, root = read_manifest(manifest, 'test'), manifest_data_root(manifest)
    singles = [root/p for p in df[df.kind == 'single'].path]
    combos, npills = [root/p for p in df[df.kind == 'combo'].path], df[df.kind == 'combo'].n_pills.tolist()
    ex = export(run, out=work/'export')
    rows, samples = [], {}

    def bench(label, pr, files, mode, bare=None):
        it = iter(range(10**9))
        ms = timed(lambda: pr.predict(files[next(it) % len(files)], mode), a.n)
        samples[label] = ms
        rows.append(dict(case=label, **stats(ms), bare_forward_p50=bare))

    def bare_forward(model, size):
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode(): return stats(timed(lambda: model(x), a.n))['p50']

    files = run_files(run)
    pt = TwoStagePredictor(run, single_crop='whole')
    ox = TwoStagePredictor(classifier=ex.classifier, detector=ex.detector, single_crop='whole')
    bare = bare_forward(pt.classifier.model, pt.classifier.transform_cfg['img_size'])
    bench('single tiny, whole image (PyTorch)', pt, singles, 'single', bare)
    x = np.zeros((1, 3, ox.classifier.transform_cfg['img_size'], ox.classifier.transform_cfg['img_size']), np.float32)
    obare = stats(timed(lambda: ox.classifier.logits(x), a.n))['p50']  # ONNX Runtime's own forward: the ONNX rows' baseline
    bench('single tiny, whole image (ONNX Runtime)', ox, singles, 'single', obare)
    pt.single_crop = ox.single_crop = 'foreground'
    bench('single tiny, foreground crop (ONNX Runtime)', ox, singles, 'single', obare)
    pt.single_crop = ox.single_crop = 'detect'
    bench('single tiny, detected crop (PyTorch)', pt, singles, 'single', bare)
    bench('single tiny, detected crop (ONNX Runtime)', ox, singles, 'single', obare)
    bench('combo tiny (PyTorch)', pt, combos, 'combo', bare)
    bench('combo tiny (ONNX Runtime)', ox, combos, 'combo', obare)
    s_pt = s_profile_checkpoint(work)
    s_onnx = export_classifier(s_pt, work/'s_profile.onnx')
    spt, sox = TwoStagePredictor(classifier=s_pt), TwoStagePredictor(classifier=s_onnx)
    sbare = bare_forward(spt.classifier.model, 384)
    bench('single s profile 384, whole image (PyTorch)', spt, singles, 'single', sbare)
    xs = np.zeros((1, 3, 384, 384), np.float32)
    bench('single s profile 384, whole image (ONNX Runtime)', sox, singles, 'single', stats(timed(lambda: sox.classifier.logits(xs), a.n))['p50'])
    for r in rows: r['ratio_p50_to_bare'] = round(r['p50'] / r['bare_forward_p50'], 2) if r['bare_forward_p50'] else None
    write_report(rows, samples, dict(device=device_name(), run=str(run), n=a.n, torch_threads=torch.get_num_threads(),
                                     pills_per_combo=float(np.mean(npills)), combo_images=len(combos),
                                     seconds=round(time.time() - t0, 1), load=(load0, os.getloadavg())))


def md_table(t) -> str:
    "A DataFrame as a markdown table (no tabulate dependency)."
    head = '| ' + ' | '.join(t.columns) + ' |'
    return '\n'.join([head, '|' + '---|' * len(t.columns), *('| ' + ' | '.join('' if v is None else str(v) for v in r) + ' |' for r in t.itertuples(index=False))])


def write_report(rows, samples, info):
    import pandas as pd
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from pillsnap.outputs import kst_now, write_text
    t = pd.DataFrame(rows)
    targets = {'single tiny, whole image (ONNX Runtime)': ('< 50 ms', 50), 'single tiny, detected crop (ONNX Runtime)': ('< 50 ms', 50),
               'single tiny, foreground crop (ONNX Runtime)': ('< 50 ms', 50),
               'single s profile 384, whole image (ONNX Runtime)': ('< 200 ms', 200)}
    t['target'] = [targets.get(c, ('', None))[0] for c in t.case]
    t['met'] = [('yes' if p <= targets[c][1] else 'NO') if c in targets else '' for c, p in zip(t.case, t.p95)]
    md = [f'# CPU latency per image, batch 1: PyTorch vs ONNX Runtime', '',
          f"{kst_now()} · {info['device']} · {info['n']} images per case after 5 warm-up · torch threads {info['torch_threads']}",
          '', f"Machine load (1-min load average, 2 cores) at the start {info['load'][0][0]:.1f} and the end {info['load'][1][0]:.1f} "
          'of the bench: other jobs shared the CPU, so absolute times are inflated; the ratio to the bare forward pass '
          'measured in the same run is the robust figure.',
          '', 'Per image = file read → crop(s) → classifier (→ detector) → pills, through `TwoStagePredictor`.',
          f"Combo images hold {info['pills_per_combo']:.2f} pills on average ({info['combo_images']} images of the synthetic test split).",
          'The bare baseline (`bare_forward_p50`) is the classifier forward pass alone on a ready 1-image tensor, measured in the same '
          'run with the same backend (PyTorch rows: the PyTorch model; ONNX Runtime rows: the ONNX Runtime session).', '',
          md_table(t), '', f"run: `{info['run']}`; total bench time {info['seconds']} s.", '',
          '![latency](bench_latency.png)', '']
    write_text(REPO/'reports'/'bench_latency.md', '\n'.join(md))
    fig, ax = plt.subplots(figsize=(9, 4.5), layout='constrained')
    ax.boxplot(list(samples.values()), vert=False, tick_labels=list(samples), showfliers=False)
    ax.set(xlabel='ms per image (batch 1)', title=f"CPU latency, {info['device'][:60]}"); ax.tick_params(labelsize=7)
    fig.savefig(REPO/'reports'/'bench_latency.png', dpi=110)
    print('\n'.join(md))


if __name__ == '__main__':
    main()
