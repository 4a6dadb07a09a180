"""Tiny-profile targets end to end (issues 8 and 10): one synthetic set, one `pillsnap.train.train` run of both models,
one `pillsnap.evaluate.evaluate` on the test split (the official-val tree, never trained on or used for selection).

Targets: classifier group-split val top-1 >= 0.95, detector val mAP@0.5 >= 0.9, end-to-end combination per-pill recall
>= 0.95 at precision >= 0.95 on the test split, all within a demo-sized CPU budget. Writes reports/target_tiny.{md,json,png}.

    .venv/bin/python bench/target_tiny.py --work /tmp/tt [--per-class 160 --combos 120 --epochs 20 --detector-epochs 45]
"""
import argparse, json, os, resource, sys, time
from pathlib import Path

from pillsnap.evaluate import evaluate
from pillsnap.outputs import kst_now
from pillsnap.runlog import read_metrics
from pillsnap.stage import synth_manifest
from pillsnap.train import plot_training, train

REPO = Path(__file__).resolve().parent.parent


def cpu_s() -> float:
    "CPU seconds (user + system) of this process and its finished children (less sensitive to other load than wall time)."
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ('ru_utime', 'ru_stime'))


def model_seconds(run: Path) -> dict:
    "Wall seconds of the training epochs of each model (sum of epoch_time_s)."
    ep = read_metrics(run, 'epoch')
    return {m: round(float(g.epoch_time_s.sum()), 1) for m, g in ep.groupby('model')}


def report(a, run: Path, ev: dict, cost: dict) -> str:
    "The markdown page."
    ep = read_metrics(run, 'epoch')
    cl, det = ep[ep.model == 'classifier'], ep[ep.model == 'detector']
    c, d, e = ev.get('classification') or {}, ev.get('detection') or {}, ev.get('combo') or {}
    best_top1, best_map = float(cl.top1.max()), float(det.map50.max()) if len(det) else float('nan')
    ok = lambda v, t: 'met' if v is not None and v >= t else '**not met**'
    f = lambda v: 'n/a' if v is None else f'{v:.3f}'
    rows = [('classifier val top-1 (group split, best epoch)', best_top1, 0.95),
            ('detector val mAP@0.5 (best epoch)', best_map, 0.9),
            ('test: single-pill top-1 (predictor, default crop)', c.get('top1'), None),
            ('test: detection mAP@0.5', d.get('map50'), None),
            ('test: combination per-pill recall', e.get('recall'), 0.95),
            ('test: combination per-pill precision', e.get('precision'), 0.95),
            ('test: combination images with every pill right', e.get('images_all_right'), None)]
    lines = ['# Tiny profile targets, end to end', '',
             f'Run {kst_now()} · `python bench/target_tiny.py {" ".join(a.argv)}` · 2-core CPU, no GPU · '
             f'load average at the end {", ".join(f"{x:.1f}" for x in os.getloadavg())} (other jobs share the cores: '
             'wall seconds are inflated, CPU seconds much less so).', '',
             f'Data: `synth(classes={a.classes}, per_class={a.per_class}, combos={a.combos}, scale=0.25, seed=42)` → scan → '
             'Stage 3 `max_combo` manifest (every image, group split) → YOLO set; `train(target="both", profile="tiny")`; '
             '`evaluate(split="test", mode="both")` (the official-val tree: never trained on, never used to pick a checkpoint).', '',
             '| measure | value | target | |', '|---|---|---|---|',
             *[f'| {n} | {f(v)} | {"≥ " + str(t) if t else ""} | {ok(v, t) if t else ""} |' for n, v, t in rows], '',
             f'Cost: **{cost["cpu_s"] / 60:.1f} CPU-minutes** for training both models ({cost["wall_s"] / 60:.1f} min wall); '
             f'epoch wall seconds per model {cost["model_s"]}; evaluation {cost["eval_s"]:.0f} s wall.', '',
             f'Classifier: {int(cl.epoch.max())} epochs; detector: {int(det.epoch.max()) if len(det) else 0} epochs. '
             f'Most-confused test pairs: {[(p["true"], p["predicted"], p["count"]) for p in c.get("confused_pairs", [])[:5]]}.', '',
             '![curves](target_tiny.png)', '']
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--work', type=Path, required=True)
    ap.add_argument('--classes', type=int, default=30); ap.add_argument('--per-class', type=int, default=160)
    ap.add_argument('--combos', type=int, default=120)
    ap.add_argument('--epochs', type=int, default=None); ap.add_argument('--detector-epochs', type=int, default=45)  # 120 combinations: 10 iterations/epoch, warm-up >= 100
    ap.add_argument('--lr', type=float, default=None); ap.add_argument('--batch-size', type=int, default=None)
    ap.add_argument('--ema', action='store_true', default=None)
    ap.add_argument('--out', type=Path, default=REPO/'reports')
    a = ap.parse_args(); a.argv = sys.argv[1:]
    manifest = a.work/'manifest'
    if not (manifest/'yolo'/'data.yaml').exists():
        synth_manifest(a.work, classes=a.classes, per_class=a.per_class, combos=a.combos, scale=0.25,
                       samples=1_000_000, strategy='max_combo', stage=3, yolo=True)
    run = a.work/'run'
    c0, t0 = cpu_s(), time.time()
    train(manifest, out=run, target='both', profile='tiny', epochs=a.epochs, detector_epochs=a.detector_epochs,
          lr=a.lr, batch_size=a.batch_size, ema=a.ema, workers=0, resume=(run/'run.json').exists(), echo=False)
    cost = dict(cpu_s=cpu_s() - c0, wall_s=time.time() - t0, model_s=model_seconds(run))
    t1 = time.time()
    ev = evaluate(run, split='test', mode='both', latency_images=10, throughput_batch=8).metrics
    cost['eval_s'] = time.time() - t1
    a.out.mkdir(parents=True, exist_ok=True)
    plot_training(run).savefig(a.out/'target_tiny.png', dpi=90)
    (a.out/'target_tiny.md').write_text(report(a, run, ev, cost), encoding='utf-8')
    keep = {k: ev.get(k) for k in ('classification', 'detection', 'combo', 'figures')}
    if keep['classification']: keep['classification'] = {x: v for x, v in keep['classification'].items() if x != 'per_class'}
    (a.out/'target_tiny.json').write_text(json.dumps(dict(cost=cost, run=str(run), **keep), indent=1, default=str))
    print((a.out/'target_tiny.md').read_text())


if __name__ == '__main__':
    main()
