"""CPU batch-1 latency per image, PyTorch vs ONNX Runtime, through `TwoStagePredictor` (file read to pills).

Targets (issue 10): single mode tiny p95 < 50 ms; s profile (tf_efficientnetv2_s at 384, random init) p95 < 200 ms;
combo mode tiny p95 reported with the number of pills. The bare baseline measured in the same run is the model's own
forward pass on a ready tensor (same backend), plus the detector's own forward for rows that detect, so the predictor's
overhead shows as a ratio. Detector rows come three ways: the PyTorch checkpoint through ultralytics' `YOLO.predict`,
the ONNX export through `YOLO.predict`, and the ONNX export in ONNX Runtime directly (pillsnap's letterbox + NMS).
The s profile rows add the int8 export (`pillsnap.export.quantize_classifier`) beside fp32.
Writes reports/bench_latency.md and reports/bench_latency.png. Usage:
    .venv/bin/python bench/bench_latency.py [--run RUN_DIR] [--n 60] [--work DIR]
Without --run it builds the tests' tiny run (tests/eval_run.py: 60 classes, 240 combinations, a detector that finds
the pills) first (several minutes on 2 cores).
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def build_run(work: Path) -> Path:
    "The tests' tiny two-stage run (tests/eval_run.py), trained once in `work`."
    sys.path.insert(0, str(REPO/'tests'))
    from eval_run import build_run as build
    return work/'run' if (work/'run'/'classifier'/'best.pt').exists() else build(work)


def s_profile_checkpoint(work: Path, classes: int = 50, size: int = 384, bn_crops=None) -> Path:
    "A random-init tf_efficientnetv2_s classifier checkpoint at `size` in PillSnap's format (BatchNorm statistics from `bn_crops`)."
    import torch
    from pillsnap.classifier import create_classifier, save_checkpoint
    path = work/('s_profile_bn.pt' if bn_crops is not None else 's_profile.pt')
    if path.exists(): return path
    m = create_classifier('tf_efficientnetv2_s', classes)
    if bn_crops is not None:  # random conv weights, but BatchNorm statistics of real crops: logits of a sane scale
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm): mod.reset_running_stats(); mod.momentum = None
        with torch.no_grad():
            m.train(); [m(torch.from_numpy(bn_crops[i:i + 8])) for i in range(0, len(bn_crops), 8)]; m.eval()
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


def s_crops(df, root, n: int, size: int = 384, seed: int = 42) -> np.ndarray:
    "`n` pill crops of manifest rows at `size` px (made as at inference, mean/std 0.5)."
    from PIL import Image
    from pillsnap.manifest import pill_boxes
    from pillsnap.predict import crop_tensor
    tr, xs = dict(img_size=size, mean=[0.5] * 3, std=[0.5] * 3, crop_margin=0.1), []
    for p, b in zip(*df.sample(frac=1, random_state=seed)[['path', 'boxes']].values.T):
        xs += [crop_tensor(Image.open(root/p).convert('RGB'), list(box), tr, size) for box in pill_boxes(b)[:1]]
        if len(xs) >= n: break
    return np.stack(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--run', type=Path, default=None)
    ap.add_argument('--n', type=int, default=60)
    ap.add_argument('--work', type=Path, default=None)
    a = ap.parse_args()
    import torch
    from pillsnap.evaluate import device_name
    from pillsnap.export import export, export_classifier, quantize_classifier
    from pillsnap.manifest import read_manifest
    from pillsnap.predict import Detector, TwoStagePredictor
    from pillsnap.yolo import manifest_data_root
    work = a.work or Path(tempfile.mkdtemp(prefix='pillsnap-bench-lat-'))
    t0, load0 = time.time(), os.getloadavg()
    run = a.run or build_run(work)
    manifest = Path(json.loads((run/'run.json').read_text())['params']['manifest_dir'])
    df, root = read_manifest(manifest, 'test'), manifest_data_root(manifest)
    singles = [root/p for p in df[df.kind == 'single'].path]
    combos, npills = [root/p for p in df[df.kind == 'combo'].path], df[df.kind == 'combo'].n_pills.tolist()
    ex = export(run, out=work/'export', check=False)
    rows, samples = [], {}

    def bench(label, pr, files, mode, bare=None, det=None):
        it, got = iter(range(10**9)), []
        l0 = os.getloadavg()[0]
        ms = timed(lambda: got.append(len(pr.predict(files[next(it) % len(files)], mode)[0].pills)), a.n)
        samples[label] = ms
        rows.append(dict(case=label, **stats(ms), bare_forward_p50=bare, detector_forward_p50=det,
                         pills_per_image=round(float(np.mean(got)), 2), load=round(l0, 1)))

    def bare_forward(model, size):
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode(): return stats(timed(lambda: model(x), a.n))['p50']

    def ort_forward(sess, size):
        x, name = np.zeros((1, 3, size, size), np.float32), sess.get_inputs()[0].name
        return stats(timed(lambda: sess.run(None, {name: x}), a.n))['p50']

    pt = TwoStagePredictor(run, single_crop='whole')
    ox = TwoStagePredictor(classifier=ex.classifier, detector=ex.detector, single_crop='whole')  # ONNX Runtime direct
    oy = TwoStagePredictor(classifier=ex.classifier, single_crop='whole')
    oy.detector = Detector(ex.detector, ultralytics=True)  # the ONNX detector through ultralytics' YOLO.predict
    size, dsz = pt.classifier.transform_cfg['img_size'], ox.detector.imgsz
    bare, obare = bare_forward(pt.classifier.model, size), ort_forward(ox.classifier.session, size)
    dbare = bare_forward(pt.detector.yolo.model.eval(), dsz)  # the detector's own forward, PyTorch and ONNX Runtime
    odbare = ort_forward(ox.detector.session, dsz)
    bench('single tiny, whole image (PyTorch)', pt, singles, 'single', bare)
    bench('single tiny, whole image (ONNX Runtime)', ox, singles, 'single', obare)
    ox.single_crop = 'foreground'
    bench('single tiny, foreground crop (ONNX Runtime)', ox, singles, 'single', obare)
    for p in (pt, ox, oy): p.single_crop = 'detect'
    bench('single tiny, detected crop (PyTorch, YOLO.predict)', pt, singles, 'single', bare, dbare)
    bench('single tiny, detected crop (ONNX via YOLO.predict)', oy, singles, 'single', obare, odbare)
    bench('single tiny, detected crop (ONNX Runtime direct)', ox, singles, 'single', obare, odbare)
    bench('combo tiny (PyTorch, YOLO.predict)', pt, combos, 'combo', bare, dbare)
    bench('combo tiny (ONNX via YOLO.predict)', oy, combos, 'combo', obare, odbare)
    bench('combo tiny (ONNX Runtime direct)', ox, combos, 'combo', obare, odbare)
    tr = read_manifest(manifest, 'train')
    s_pt = s_profile_checkpoint(work, bn_crops=s_crops(tr, root, 64))
    s_onnx = export_classifier(s_pt, work/'s_profile.onnx')
    s_q8 = work/'s_profile.int8.onnx'
    if not s_q8.exists(): quantize_classifier(s_onnx, s_q8, s_crops(tr, root, 32, seed=1))
    spt, sox, sq8 = (TwoStagePredictor(classifier=c, single_crop='whole') for c in (s_pt, s_onnx, s_q8))
    bench('single s profile 384, whole image (PyTorch)', spt, singles, 'single', bare_forward(spt.classifier.model, 384))
    bench('single s profile 384, whole image (ONNX Runtime fp32)', sox, singles, 'single', ort_forward(sox.classifier.session, 384))
    bench('single s profile 384, whole image (ONNX Runtime int8)', sq8, singles, 'single', ort_forward(sq8.classifier.session, 384))
    sx = s_crops(read_manifest(manifest, 'val'), root, 32)
    z, zq = spt.classifier.logits(sx), sq8.classifier.logits(sx)
    s_int8 = dict(crops=len(sx), top1_agreement=round(float(np.mean(z.argmax(1) == zq.argmax(1))), 4),
                  max_abs_logit_diff=round(float(np.abs(z - zq).max()), 3), logit_std=round(float(z.std()), 3))
    for r in rows:
        base = (r['bare_forward_p50'] or 0) + (r['detector_forward_p50'] or 0)
        r['ratio_p50_to_bare'] = round(r['p50'] / base, 2) if base else None
    write_report(rows, samples, dict(device=device_name(), run=str(run), n=a.n, torch_threads=torch.get_num_threads(),
                                     pills_per_combo=float(np.mean(npills)), combo_images=len(combos), s_int8=s_int8,
                                     seconds=round(time.time() - t0, 1), load=(load0, os.getloadavg())))


def md_table(t) -> str:
    "A DataFrame as a markdown table (no tabulate dependency)."
    head = '| ' + ' | '.join(t.columns) + ' |'
    return '\n'.join([head, '|' + '---|' * len(t.columns), *('| ' + ' | '.join('' if v is None or v != v else str(v) for v in r) + ' |' for r in t.itertuples(index=False))])


def write_report(rows, samples, info):
    import pandas as pd
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from pillsnap.outputs import kst_now, write_text
    t = pd.DataFrame(rows)
    targets = {'single tiny, whole image (ONNX Runtime)': ('< 50 ms', 50), 'single tiny, detected crop (ONNX Runtime direct)': ('< 50 ms', 50),
               'single tiny, foreground crop (ONNX Runtime)': ('< 50 ms', 50),
               'single s profile 384, whole image (ONNX Runtime fp32)': ('< 200 ms', 200),
               'single s profile 384, whole image (ONNX Runtime int8)': ('< 200 ms', 200)}
    t['target'] = [targets.get(c, ('', None))[0] for c in t.case]
    t['met'] = [('yes' if p <= targets[c][1] else 'NO') if c in targets else '' for c, p in zip(t.case, t.p95)]
    md = ['# CPU latency per image, batch 1: PyTorch vs ONNX Runtime', '',
          f"{kst_now()} · {info['device']} · {info['n']} images per case after 5 warm-up · torch threads {info['torch_threads']}",
          '', f"Machine load (1-min load average, 2 cores) at the start {info['load'][0][0]:.1f} and the end {info['load'][1][0]:.1f} "
          'of the bench: other jobs shared the CPU, so absolute times are inflated; the ratio to the bare forward pass '
          'measured in the same run is the robust figure.',
          '', 'Per image = file read → crop(s) → classifier (→ detector) → pills, through `TwoStagePredictor`.',
          f"Combo images hold {info['pills_per_combo']:.2f} pills on average ({info['combo_images']} images of the synthetic test split); "
          '`pills_per_image` is what the predictor returned.',
          'The bare baseline (`bare_forward_p50`) is the classifier forward pass alone on a ready 1-image tensor, measured in the same '
          'run with the same backend (PyTorch rows: the PyTorch model; ONNX Runtime rows: the ONNX Runtime session); rows that '
          'detect add the detector\'s own forward (`detector_forward_p50`, at its image size) to the baseline of the ratio. '
          '`load` is the 1-min load average when the row started.',
          'Detector paths: the PyTorch checkpoint through ultralytics\' `YOLO.predict`; the ONNX export through `YOLO.predict`; the '
          'ONNX export in an ONNX Runtime session directly (`pillsnap.predict.Detector`: letterbox, decode, batched NMS; same boxes).',
          f"s profile: tf_efficientnetv2_s at 384 px, random conv weights with BatchNorm statistics estimated on 64 real crops; "
          f"int8 = `quantize_classifier` (static QDQ, per-channel 7-bit weights, 32 calibration crops). int8 vs PyTorch on "
          f"{info['s_int8']['crops']} val crops: top-1 agreement {info['s_int8']['top1_agreement']}, max |logit diff| "
          f"{info['s_int8']['max_abs_logit_diff']} (logit std {info['s_int8']['logit_std']}).", '',
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
