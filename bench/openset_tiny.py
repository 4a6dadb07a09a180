"""Measure open-set rejection on a tiny run: a synthetic tree whose look-alike classes (shape + colours shared with
another class: the imprint-only twins) are held out of training, a tiny classifier, the rule calibrated on val
(target FAR 10 %) and evaluated on test, once on the labelled pill box and once on the crop `predict` makes without a
detector (the whole photo); then the same with 10 % of the classes held out at random (look-alikes of known classes
included). Writes reports/openset.md and reports/openset_{looks,random}_{scores,coverage}_{label,predict}.png.

    .venv/bin/python bench/openset_tiny.py [--classes 20] [--per-class 24] [--epochs 12] [--img-size 64] [--out reports]
"""
import argparse, json, tempfile, time
from collections import Counter
from pathlib import Path
from pillsnap.openset import calibrate, evaluate_openset, holdout_manifest, plot_coverage, plot_openset_scores
from pillsnap.outputs import kst_now, write_text
from pillsnap.runlog import read_metrics
from pillsnap.scan import read_inventory
from pillsnap.stage import synth_manifest
from pillsnap.train import train


def shared_look_codes(inventory: Path) -> list[str]:
    "Train single-pill codes whose shape and colours another train class shares."
    inv = read_inventory(inventory)
    tr = inv[(inv.split == 'train') & (inv.kind == 'single')]
    look = {r.code: (r.pills[0]['drug_shape'], r.pills[0]['color_class1'], r.pills[0]['color_class2']) for r in tr.itertuples()}
    n = Counter(look.values())
    return sorted(c for c, l in look.items() if n[l] > 1)


def data(tmp: Path, a) -> Path:
    "The synthetic tree, scanned, and its Stage 1 single-pill manifest."
    return synth_manifest(tmp, classes=a.classes, per_class=a.per_class, combos=0, scale=0.2, samples=10_000,
                          strategy='single_only', stage=1, seed=a.data_seed, split_seed=42)


def trained(tmp: Path, scheme: str, a) -> tuple[Path, list, float]:
    "A run trained without the held-out classes of `scheme` ('looks': every shared look; 'random': 10 %, seeded)."
    classes = shared_look_codes(tmp/'inv'/'inventory.parquet') if scheme == 'looks' else None
    h = holdout_manifest(tmp/'manifest', tmp/f'manifest_{scheme}', classes=classes)
    t0 = time.perf_counter()
    train(h.manifest, out=tmp/f'run_{scheme}', target='classifier', epochs=a.epochs, workers=0, echo=False,
          classifier_kw=dict(img_size=a.img_size, batch_size=16, lr=a.lr, threads=1, progress=False))
    return tmp/f'run_{scheme}', h.codes, time.perf_counter() - t0


def measure(run: Path, crop: str, far: float) -> tuple[dict, dict]:
    "The rule calibrated on val and its evaluation on test, both on `crop` crops."
    rule = calibrate(run, target_far=far, crop=crop)
    return rule, evaluate_openset(run, split='test', crop=crop, write=False)


def pct(v): return '—' if v is None else f'{v:.1%}'
def num(v): return '—' if v is None else f'{v:.3f}'

SCHEMES = {'looks': 'every class whose shape and colours another class shares (the imprint-only twins and chance '
                    'look-alikes), so each known class has a look of its own and no held-out pill looks like a known one',
           'random': "10 % of the classes drawn at random (`holdout_manifest`'s default), look-alikes of known classes included"}


def table(res: dict) -> list[str]:
    rows = ['| crop | score | val AUROC | val FAR | val known accepted | test AUROC | test FAR | test known accepted | '
            'test top-1 (known) | top-1 of accepted |', '|---|---|---|---|---|---|---|---|---|---|']
    for crop, (rule, ev) in res.items():
        for kind, m in rule['by_score'].items():
            chosen = kind == rule['score']
            rows.append(f"| {crop} | {kind}{' (chosen)' if chosen else ''} | {num(m['auroc'])} | {pct(m['far'])} | "
                        f"{pct(m['known_accepted'])} | " + (f"{num(ev['auroc'])} | {pct(ev['far'])} | {pct(ev['known_accepted'])} | "
                        f"{pct(ev['top1_known'])} | {pct(ev['top1_accepted'])} |" if chosen else '| | | | |'))
    return rows


def section(scheme: str, codes: list, secs: float, top1_val: float, res: dict, a) -> list[str]:
    (rl, el), (rp, ep) = res['label'], res['predict']
    return [f'## Held out: {SCHEMES[scheme]}', '',
            f'{len(codes)} classes held out ({", ".join(codes)}); classifier trained in {secs:.0f} s, val top-1 at the '
            f'last epoch {pct(top1_val)}.', '', *table(res), '',
            f"On the labelled box the {rl['score']} score was chosen (val AUROC {num(rl['auroc'])}); on test it reaches "
            f"AUROC {num(el['auroc'])} with {pct(el['far'])} of the held-out images accepted and {pct(el['known_accepted'])} "
            f"of the known ones, whose accepted answers are {pct(el['top1_accepted'])} right (all known: {pct(el['top1_known'])}). "
            f"On the whole-photo crop the classifier is at {pct(ep['top1_known'])} top-1, so its scores say little.", '',
            *[f'![{scheme}, {c}: scores](openset_{scheme}_scores_{c}.png) ![{scheme}, {c}: accuracy vs coverage]'
              f'(openset_{scheme}_coverage_{c}.png)' for c in res], '']


def report(a, sections: list) -> str:
    return '\n'.join([
        '# Open-set rejection on a tiny run', '',
        f'{kst_now()} · `.venv/bin/python bench/openset_tiny.py --classes {a.classes} --per-class {a.per_class} '
        f'--epochs {a.epochs} --img-size {a.img_size}`', '',
        f'Data: synthetic AIHub tree (seed {a.data_seed}, {a.classes} classes of which one is val-only, {a.per_class} '
        f'train images per class, scale 0.2), Stage 1 `single_only` manifest. Classifier per scheme: tiny profile '
        f'(`test_efficientnet`), {a.img_size} px, {a.epochs} epochs, lr {a.lr}, seed 42, on this loaded 2-core CPU.', '',
        f'Rule: temperature fitted on val (NLL), threshold chosen on val for a false-accept rate of {a.far:.0%} of the '
        'held-out images; evaluated on test (the official val tree): known test images vs held-out test images. '
        '*label*: crops of the labelled pill box (what the classifier trained on; what a detector gives). *predict*: '
        'the crop `predict` makes without a detector (the whole photo, squared: the pill is far smaller than in training).',
        '', *[l for s in sections for l in s]])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--classes', type=int, default=20); ap.add_argument('--per-class', type=int, default=24)
    ap.add_argument('--data-seed', type=int, default=3); ap.add_argument('--epochs', type=int, default=12)
    ap.add_argument('--img-size', type=int, default=64); ap.add_argument('--lr', type=float, default=5e-3)
    ap.add_argument('--far', type=float, default=0.1); ap.add_argument('--out', type=Path, default=Path('reports'))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    sections, summary = [], {}
    with tempfile.TemporaryDirectory() as d:
        data(Path(d), a)
        for scheme in SCHEMES:
            run, codes, secs = trained(Path(d), scheme, a)
            top1_val = float(read_metrics(run, 'epoch', 'classifier').top1.iloc[-1])
            res = {c: measure(run, c, a.far) for c in ('label', 'predict')}
            for c, (_, ev) in res.items():
                plot_openset_scores(ev).savefig(a.out/f'openset_{scheme}_scores_{c}.png', dpi=100)
                plot_coverage(ev).savefig(a.out/f'openset_{scheme}_coverage_{c}.png', dpi=100)
            sections.append(section(scheme, codes, secs, top1_val, res, a))
            summary[scheme] = {c: dict(rule={k: r[k] for k in ('score', 'temperature', 'threshold', 'auroc')},
                                       test={k: e[k] for k in ('auroc', 'far', 'known_accepted', 'top1_known')}) for c, (r, e) in res.items()}
    write_text(a.out/'openset.md', report(a, sections))
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
