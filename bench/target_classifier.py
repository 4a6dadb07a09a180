"""Classifier target: the tiny profile on the default synthetic set (more images per class if asked) must reach
group-split val top-1 >= 0.95 on CPU. Trains (or, if the run folder already holds a finished run, reads it back) and
writes reports/classifier_target.md and reports/classifier_target.png.

    .venv/bin/python bench/target_classifier.py --work /tmp/target --per-class 40 [--epochs 20 --threads 1]
"""
import argparse, json, resource, time, warnings
from pathlib import Path
from pillsnap.classifier import train_classifier
from pillsnap.classmap import ensure_class_map
from pillsnap.manifest import build_manifest
from pillsnap.runlog import read_metrics
from pillsnap.scan import scan
from pillsnap.synth import synth


def make_manifest(work: Path, per_class: int, seed: int) -> Path:
    "The default synthetic set (30 classes, 12 combinations, scale 0.25) with `per_class` train images per class."
    if (work/'m'/'manifest_train.parquet').exists(): return work/'m'
    synth(work/'data', classes=30, per_class=per_class, combos=12, scale=0.25, seed=seed, progress=False)
    inv = scan(work/'data', work/'inv', check='labels', workers=1, progress=False)
    cm = ensure_class_map(inv.inventory, work/'inv'/'class_mapping.json')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        build_manifest(inv.inventory, cm, strategy='max_combo', samples=100_000, classes=30, seed=seed,
                       out_dir=work/'m', data_root=work/'data', allow_shortfall=True)
    return work/'m'


def cpu_seconds(run: Path) -> float:
    "Wall seconds of the training epochs (sum of epoch_time_s)."
    return float(read_metrics(run, 'epoch', 'classifier').epoch_time_s.sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--work', required=True); ap.add_argument('--tag', default='tiny')
    ap.add_argument('--per-class', type=int, default=12); ap.add_argument('--epochs', type=int, default=20)
    ap.add_argument('--batch-size', type=int, default=32); ap.add_argument('--lr', type=float, default=3e-3)
    ap.add_argument('--threads', type=int, default=1); ap.add_argument('--out', default='reports')
    ap.add_argument('--model', help='override the tiny profile model (timm name)'); ap.add_argument('--img-size', type=int)
    ap.add_argument('--ema', action='store_true', help='keep an EMA of the weights (validated and saved as the model)')
    ap.add_argument('--report-only', action='store_true', help='write the report of the run as it is, train nothing')
    ap.add_argument('--name', default='classifier_target', help='report file name (without suffix)')
    ap.add_argument('--note', default='', help='a paragraph of analysis added to the report')
    a = ap.parse_args()
    work = Path(a.work); m = make_manifest(work, a.per_class, 42)
    if not a.report_only:
        c0, w0 = time.process_time(), time.perf_counter()
        train_classifier(m, work/a.tag, profile='tiny', epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, model=a.model,
                         img_size=a.img_size, threads=a.threads, ema=a.ema, cache_dir=work/'cache', resume=True, progress=False)
        (work/a.tag/'cpu.json').write_text(json.dumps(dict(cpu_s=round(time.process_time() - c0, 1),
                                                           wall_s=round(time.perf_counter() - w0, 1))))
    cpu = json.loads((work/a.tag/'cpu.json').read_text()) if (work/a.tag/'cpu.json').exists() else None
    ep = read_metrics(work/a.tag, 'epoch', 'classifier')
    start = read_metrics(work/a.tag, 'event').query("event == 'start'").iloc[0]
    cfg = start.config
    best = ep.loc[ep.top1.idxmax()]
    ep = ep.reset_index(drop=True)
    reached = ep[ep.top1 >= 0.95]
    lines = ['# Classifier target: tiny profile on the synthetic set', '',
             f'Command: `python bench/target_classifier.py --work {a.work} --tag {a.tag} --per-class {a.per_class} '
             f'--epochs {cfg["epochs"]} --batch-size {cfg["batch_size"]} --lr {cfg["lr"]} --threads {cfg["threads"]} '
             f'--model {cfg["model"]} --img-size {cfg["img_size"]}' + (' --ema' if cfg.get('ema') else '') + '`' + (f' (run stopped after epoch {len(ep)} of {cfg["epochs"]})'
             if len(ep) < cfg['epochs'] else ''), '',
             f'Data: synth(classes=30, per_class={a.per_class}, combos=12, scale=0.25), manifest max_combo (every image), '
             f'group split; {int(start.train_crops)} train crops / {int(start.val_crops)} val crops, {int(start.classes)} head classes '
             '(twin classes differing only by imprint included).',
             f'Model: {cfg["model"]} at {cfg["img_size"]} px, batch {cfg["batch_size"]}, AdamW lr {cfg["lr"]}, cosine with '
             f'warm-up, label smoothing {cfg["label_smoothing"]}, {cfg["threads"]} CPU thread(s), random init'
             + (f', EMA of the weights (decay {cfg["ema_decay"]}).' if cfg.get('ema') else '.'), '',
             f'**Best val top-1 {best.top1:.3f}** (epoch {int(best.epoch)}; top-5 {best.top5:.3f}, macro-F1 {best.macro_f1:.3f}); '
             + (f'top-1 ≥ 0.95 first at epoch {int(reached.epoch.iloc[0])} after {ep.epoch_time_s[:reached.index[0] + 1].sum():.0f} s of '
                'training wall time.' if len(reached) else '**the 0.95 target was not reached.**'),
             f'Training wall time {cpu_seconds(work/a.tag):.0f} s for {len(ep)} epochs (shared 2-core VM, load well above 2: '
             'the same run on an idle core is several times faster).'
             + (f' The whole call (cache reuse, training, validation, checkpoints) took **{cpu["cpu_s"]:.0f} CPU s** in '
                f'{cpu["wall_s"]:.0f} s wall.' if cpu else ''), '',
             '| epoch | train_loss | val_loss | top1 | top5 | macro_f1 | epoch_time_s |', '|---|---|---|---|---|---|---|',
             *[f'| {int(r.epoch)} | {r.train_loss:.3f} | {r.val_loss:.3f} | {r.top1:.3f} | {r.top5:.3f} | {r.macro_f1:.3f} | '
               f'{r.epoch_time_s:.1f} |' for r in ep.itertuples()], '',
             *([f'Lowest val recall at the last epoch: {ep.worst_codes.iloc[-1]}', ''] if 'worst_codes' in ep else []),
             *([a.note, ''] if a.note else []), f'![curves]({a.name}.png)', '']
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out/f'{a.name}.md').write_text('\n'.join(lines), encoding='utf-8')
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(ep.epoch, ep.train_loss, label='train'); ax[0].plot(ep.epoch, ep.val_loss, label='val'); ax[0].set_title('loss'); ax[0].legend()
    for k in ('top1', 'top5', 'macro_f1'): ax[1].plot(ep.epoch, ep[k], label=k)
    ax[1].axhline(0.95, ls='--', c='grey'); ax[1].set_title('val'); ax[1].legend(); fig.tight_layout()
    fig.savefig(out/f'{a.name}.png', dpi=100)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
