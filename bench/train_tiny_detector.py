"""Tiny detector target: yolo11n on the synthetic combination images reaches mAP@0.5 >= 0.9 within a few CPU minutes.

Writes reports/train_tiny.md (and reports/train_tiny_detector.json). Usage:
    .venv/bin/python bench/train_tiny_detector.py [--classes 60] [--combos 240] [--epochs 30] [--imgsz 224] [--work DIR]
"""
import argparse, json, os, resource, tempfile, time, warnings
from pathlib import Path

from pillsnap.classmap import ensure_class_map
from pillsnap.detector import DetectorTrainer
from pillsnap.manifest import build_manifest
from pillsnap.runlog import read_metrics
from pillsnap.scan import scan
from pillsnap.synth import synth
from pillsnap.yolo import coco_to_yolo

REPO = Path(__file__).resolve().parent.parent


def make_set(work: Path, classes: int, per_class: int, combos: int, scale: float) -> tuple[Path, dict]:
    "Synthetic tree -> scan -> class map -> Stage 3 max_combo manifest -> YOLO set; returns the manifest folder and counts."
    t0 = time.time()
    if (work/'manifest'/'yolo'/'data.yaml').exists(): return work/'manifest', _counts(work, None, t0)  # reuse the set
    synth(work/'data', classes=classes, per_class=per_class, combos=combos, scale=scale, progress=False)
    scan(work/'data', work/'inventory', progress=False)
    cm = ensure_class_map(work/'inventory'/'inventory.parquet', work/'class_mapping.json')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = build_manifest(work/'inventory'/'inventory.parquet', cm, stage=3, strategy='max_combo', samples=10 * combos,
                             classes=classes, out_dir=work/'manifest', data_root=work/'data', allow_shortfall=True)
        coco_to_yolo(work/'manifest', work/'manifest'/'yolo')
    return work/'manifest', _counts(work, res, t0)


def _counts(work: Path, res, t0: float) -> dict:
    "Images and boxes of the YOLO set's splits."
    labels = {s: list((work/'manifest'/'yolo'/'labels'/s).glob('*.txt')) for s in ('train', 'val')}
    return dict(images={s: len(v) for s, v in labels.items()},
                boxes={s: sum(len(p.read_text().splitlines()) for p in v) for s, v in labels.items()},
                data_s=round(time.time() - t0, 1))


def _cpu_s() -> float:
    "CPU seconds (user + system) of this process and its finished children: less sensitive to other load than wall time."
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ('ru_utime', 'ru_stime'))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--classes', type=int, default=60)
    ap.add_argument('--per-class', type=int, default=4)
    ap.add_argument('--combos', type=int, default=240)
    ap.add_argument('--scale', type=float, default=0.25)
    ap.add_argument('--epochs', type=int, default=None)  # None: the tiny profile's
    ap.add_argument('--imgsz', type=int, default=None)
    ap.add_argument('--batch', type=int, default=None)
    ap.add_argument('--workers', type=int, default=0)  # 0: data loading in this process, so its CPU time is counted
    ap.add_argument('--work', type=Path, default=None)
    ap.add_argument('--run', default='run')
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix='pillsnap-tinydet-'))
    manifest, counts = make_set(work, a.classes, a.per_class, a.combos, a.scale)
    print('data', counts, flush=True)
    cpu0, t0 = _cpu_s(), time.time()
    res = DetectorTrainer(manifest, work/a.run, profile='tiny', epochs=a.epochs, imgsz=a.imgsz, batch=a.batch,
                          workers=a.workers)
    a.epochs, a.imgsz, a.batch = res.epochs, res.imgsz, res.batch
    res = res.fit()
    train_s, cpu_s = time.time() - t0, _cpu_s() - cpu0
    ep = read_metrics(work/a.run, 'epoch', 'detector')
    first90 = ep[ep.map50 >= 0.9]
    out = dict(run=str(work/a.run), synth=dict(classes=a.classes, per_class=a.per_class, combos=a.combos, scale=a.scale, seed=42),
               data=counts, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, workers=a.workers, cpu_count=os.cpu_count(),
               train_wall_s=round(train_s, 1), train_cpu_s=round(cpu_s, 1), load_avg_end=os.getloadavg(), mean_epoch_s=round(float(ep.epoch_time_s.mean()), 2),
               best_map50=float(ep.map50.max()), last_map50=float(ep.map50.iloc[-1]),
               last_map50_95=float(ep.map50_95.iloc[-1]), final_eval=res.final,
               first_epoch_map50_ge_0_9=None if first90.empty else int(first90.epoch.iloc[0]),
               wall_s_to_map50_0_9=None if first90.empty else round(float(ep.epoch_time_s[:first90.index[0] + 1].sum()), 1),
               curve=ep[['epoch', 'train_loss', 'map50', 'map50_95', 'precision', 'recall', 'epoch_time_s']].to_dict('records'))
    (REPO/'reports').mkdir(exist_ok=True)
    (REPO/'reports'/'train_tiny_detector.json').write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: v for k, v in out.items() if k != 'curve'}, indent=1, default=str))


if __name__ == '__main__':
    main()
