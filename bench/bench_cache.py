"""Benchmark the crop cache: build speed, loader img/s at 224 and 384 px against the PNG decode baseline and the
classifier's train img/s (tiny and s profiles) on this CPU. Writes reports/bench_cache.md and reports/bench_cache.png.

    .venv/bin/python bench/bench_cache.py [--images 60] [--out reports]
"""
import argparse, io, os, tempfile, time, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from pillsnap.cache import CACHE_SIZE, build_cache, crop_image, load_crop, pill_items
from pillsnap.classifier import (CropDataset, EpochSampler, collate_crops, create_classifier,
                                 pill_transforms, resolve_config)
from pillsnap.classmap import ensure_class_map
from pillsnap.manifest import build_manifest
from pillsnap.scan import scan
from pillsnap.synth import synth


def timed(fn, n=1):
    "Seconds per call of fn over n calls (after one warm-up call)."
    fn(); t0 = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t0) / n


def make_data(tmp: Path, classes: int, per_class: int, combos: int):
    "A full-size (976×1280) synthetic tree, scanned, with a balanced manifest."
    synth(tmp/'data', classes=classes, per_class=per_class, combos=combos, scale=1.0, progress=False)
    inv = scan(tmp/'data', tmp/'inv', check='labels', workers=1, progress=False)
    cm = ensure_class_map(inv.inventory, tmp/'inv'/'class_mapping.json')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        build_manifest(inv.inventory, cm, strategy='balanced', samples=10_000, classes=classes, out_dir=tmp/'m',
                       data_root=tmp/'data', allow_shortfall=True)
    return tmp/'m'


def png_baseline(data: Path, paths: list) -> float:
    "Full-size PNG decodes per second on one core (what a cache-less loader pays per image)."
    def decode():
        for p in paths: Image.open(data/p).convert('RGB')
    return len(paths) / timed(decode, 1)


def format_table(sample: Image.Image, n: int = 40) -> pd.DataFrame:
    "Decode time and bytes of one 384 px crop in each candidate format."
    rows = []
    arr = np.asarray(sample)
    for fmt, kw in [('JPEG q95', dict(format='JPEG', quality=95)), ('WebP q95', dict(format='WEBP', quality=95)),
                    ('PNG', dict(format='PNG'))]:
        buf = io.BytesIO(); sample.save(buf, **kw); data = buf.getvalue()
        sec = timed(lambda: [Image.open(io.BytesIO(data)).convert('RGB') for _ in range(n)]) / n
        rows.append(dict(format=fmt, kb=len(data) / 1024, decode_ms=sec * 1e3))
    mm = np.lib.format.open_memmap(Path(tempfile.mkdtemp())/'x.npy', 'w+', np.uint8, (n, *arr.shape)); mm[:] = arr
    sec = timed(lambda: [np.array(mm[i]) for i in range(n)]) / n
    rows.append(dict(format='uint8 memmap', kb=arr.nbytes / 1024, decode_ms=sec * 1e3))
    return pd.DataFrame(rows)


def loader_img_s(cache, table, size: int, workers: int, n_images: int = 320, batch: int = 16) -> float:
    "Train-transform loader throughput from the cache at `size` px (the first batch, paying worker start-up, is not timed)."
    ds = CropDataset(cache.cache_dir, table.file, np.zeros(len(table)), size,
                     pill_transforms(size, (0.5,) * 3, (0.5,) * 3, train=True))
    epochs = -(-(n_images + batch) // len(ds))
    items = [it for e in range(epochs) for it in EpochSampler(len(ds), 0, e)]  # seeded epochs back to back
    dl = DataLoader(ds, batch_size=batch, sampler=items, num_workers=workers, collate_fn=collate_crops)
    t0, n = None, 0
    for x, _, _ in dl:
        if t0 is None: t0 = time.perf_counter(); continue
        n += len(x)
    return n / (time.perf_counter() - t0)


class PngCrops(torch.utils.data.Dataset):
    "The cache-less loader: decode the source PNG, cut the pill, augment (what training pays per sample without a cache)."
    def __init__(self, root: Path, items: pd.DataFrame, size: int):
        self.root, self.items, self.size = root, items.reset_index(drop=True), size
        self.tf = pill_transforms(size, (0.5,) * 3, (0.5,) * 3, train=True)
    def __len__(self): return len(self.items)
    def __getitem__(self, i):
        r = self.items.iloc[i]
        with Image.open(self.root/r.path) as img: return i, self.tf(crop_image(img, r.box, self.size)), 0


def png_loader_img_s(root: Path, items: pd.DataFrame, size: int, n_images: int = 40) -> float:
    "Throughput of the cache-less loader (one process)."
    ds = PngCrops(root, items.head(n_images), size)
    t0 = time.perf_counter()
    for i in range(len(ds)): ds[i]
    return len(ds) / (time.perf_counter() - t0)


def model_img_s(profile: str, size: int, batch: int, steps: int = 3) -> float:
    "Train img/s of the profile's model (forward + backward + AdamW) on random input at `size`."
    c = resolve_config(profile, img_size=size, batch_size=batch)
    m = create_classifier(c.model, 100).train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 100, (batch,))
    def step():
        opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
    return batch / timed(step, steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--classes', type=int, default=12)
    ap.add_argument('--per-class', type=int, default=4)
    ap.add_argument('--combos', type=int, default=6)
    ap.add_argument('--out', default='reports')
    ap.add_argument('--work', help='folder for the synthetic data (reused if present); default: a new temporary folder')
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads for the model timings')
    a = ap.parse_args()
    torch.manual_seed(0); torch.set_num_threads(a.threads)
    tmp = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='bench_cache-'))
    m = tmp/'m' if (tmp/'m'/'manifest_train.parquet').exists() else make_data(tmp, a.classes, a.per_class, a.combos)
    run = time.strftime('%H%M%S')
    train = pd.read_parquet(m/'manifest_train.parquet')
    n_src = len(train) + len(pd.read_parquet(m/'manifest_val.parquet'))
    png_s = png_baseline(tmp/'data', train.path.tolist()[:20])
    builds = {}
    for w in (1, 2):
        t0 = time.perf_counter(); res = build_cache(m, tmp/f'cache{w}-{run}', size=CACHE_SIZE, workers=w, progress=False)
        builds[w] = (time.perf_counter() - t0, res)
    res = builds[2][1]
    t0 = time.perf_counter(); build_cache(m, tmp/f'cache2-{run}', size=CACHE_SIZE, workers=2, progress=False); t_reuse = time.perf_counter() - t0
    table = res.index[res.index.ok].reset_index(drop=True)
    fmt = format_table(load_crop(res.cache_dir, table.file.iloc[0]))
    loader = {(s, w): loader_img_s(res, table, s, w) for s in (224, 384) for w in (0, 2)}
    items = pill_items(train)
    png_loader = {s: png_loader_img_s(tmp/'data', items, s) for s in (224, 384)}
    tiny_cfg = resolve_config('tiny')
    models = {f'tiny {tiny_cfg.model} @{tiny_cfg.img_size}': model_img_s('tiny', tiny_cfg.img_size, 32, 5),
              's tf_efficientnetv2_s @224': model_img_s('s', 224, 8, 2),
              's tf_efficientnetv2_s @384': model_img_s('s', 384, 4, 1)}
    write_report(Path(a.out), locals())


def write_report(out: Path, r: dict):
    "Markdown + figure."
    out.mkdir(parents=True, exist_ok=True)
    res, builds, loader, models, fmt = r['res'], r['builds'], r['loader'], r['models'], r['fmt']
    n_src, n_crops = r['n_src'], int(res.index.ok.sum())
    png_s = r['png_s']; png_ms = 1e3 / png_s
    jpg, webp, mm = (fmt.set_index('format').loc[k] for k in ('JPEG q95', 'WebP q95', 'uint8 memmap'))
    load1_224, load1_384 = loader[(224, 0)], loader[(384, 0)]
    s224, s384 = models['s tf_efficientnetv2_s @224'], models['s tf_efficientnetv2_s @384']
    lines = [
        '# Crop cache benchmark', '',
        f'Run {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} on this VM ({os.cpu_count()} cores, shared with other jobs, '
        f'load average {os.getloadavg()[0]:.1f} at the end, no GPU); `python bench/bench_cache.py`, model timings with '
        f'{torch.get_num_threads()} torch thread(s). All figures of one run, so ratios hold even on a loaded machine. Data: a full-size (976×1280 PNG) synthetic tree, {n_src} source images '
        f'({n_crops} pill crops: singles + combination pills), cache size {res.size} px, JPEG q95.', '',
        '## Cache build', '',
        '| workers | seconds | source img/s | crops/s |', '|---|---|---|---|',
        *[f'| {w} | {t:.2f} | {n_src / t:.1f} | {n_crops / t:.1f} |' for w, (t, _) in builds.items()],
        f'| reuse (2, all files present) | {r["t_reuse"]:.2f} | {n_src / r["t_reuse"]:.0f} | — |', '',
        f'PNG decode baseline (full-size source, one core): **{png_s:.1f} img/s** ({1e3 / png_s:.0f} ms/img).', '',
        '## Storage format (one 384 px crop)', '', '| format | KB | decode ms |', '|---|---|---|',
        *[f'| {f.format} | {f.kb:.1f} | {f.decode_ms:.2f} |' for f in fmt.itertuples()], '',
        f'JPEG q95 is chosen: {jpg.decode_ms:.1f} ms per decode against {png_ms:.0f} ms for the full-size PNG source '
        f'(PIL draft mode also decodes it at 1/2-1/8 scale for smaller training sizes), {mm.kb / jpg.kb:.0f}× smaller '
        f'than a uint8 memmap ({mm.kb:.0f} KB per crop → {mm.kb * 500_000 / 2**20:.0f} GB for 500k crops at Stage 4); '
        f'WebP is smaller still but {webp.decode_ms / jpg.decode_ms:.1f}× slower to decode. The memmap reads fastest, but '
        'its size and fixed slot shape do not pay off while decoding is far from the bottleneck.', '',
        '## Loader vs model (train img/s)', '',
        '| what | img/s |', '|---|---|',
        *[f'| loader from cache @{s} px, workers={w} | {v:.0f} |' for (s, w), v in loader.items()],
        *[f'| loader without cache (PNG decode + crop + augment) @{k} px, 1 process | {v:.1f} |' for k, v in r['png_loader'].items()],
        *[f'| model train: {k} | {v:.1f} |' for k, v in models.items()], '',
        f'**Cache gain**: one loader process from the cache runs at {load1_224 / r["png_loader"][224]:.1f}× (224 px) and '
        f'{load1_384 / r["png_loader"][384]:.1f}× (384 px) the same loader reading the PNG sources (decode alone: '
        f'{png_ms / jpg.decode_ms:.0f}× faster). The augmentations (rotation, resized crop, jitter) are now a large share '
        'of the per-sample cost.', '',
        f'**Bottleneck on this CPU**: the s profile trains at {s224:.1f} img/s (224 px) and {s384:.1f} img/s (384 px) while '
        f'one loader process gives {load1_224:.0f} / {load1_384:.0f} img/s: the loader is '
        f'{"not " if load1_224 > s224 and load1_384 > s384 else ""}the bottleneck of the s profile '
        f'({load1_224 / s224:.0f}× / {load1_384 / s384:.0f}× headroom).', '',
        '## Extrapolation to a 16-core GPU box', '',
        f'Every figure above was taken with the load average near {os.getloadavg()[0]:.0f} on {os.cpu_count()} cores, so one '
        'process got a fraction of a core: absolute rates are several times below an idle core (the issue measured '
        '~43 ms per PNG decode and ~1 ms per 384 px JPEG decode idle); the extrapolation below uses them as measured, '
        'which makes it pessimistic.', '',
        f'Assumptions: loader throughput scales with worker processes (one per core, 14 of 16 used for loading); a '
        f'desktop/server core is ~1.5× a core of this shared VM; GPU train throughput with AMP + channels_last: '
        f'EfficientNetV2-S @224 ≈ 800 img/s, @384 ≈ 280 img/s; EfficientNetV2-L @384 ≈ 130 img/s (the original '
        f'project measured ~133 img/s for L on one RTX 5080).', '',
        f'- From the cache: ≈ {load1_224 * 14 * 1.5:,.0f} img/s at 224 px and ≈ {load1_384 * 14 * 1.5:,.0f} img/s at 384 px '
        f'→ enough for S @224 ({"yes" if load1_224 * 21 > 800 else "no"}), S @384 '
        f'({"yes" if load1_384 * 21 > 280 else "no"}) and L @384 ({"yes" if load1_384 * 21 > 130 else "no"}).',
        f'- From PNG: ≈ {r["png_loader"][384] * 14 * 1.5:,.0f} img/s at 384 px on 14 cores: every profile would wait for data.', '',
        '![loader vs model](bench_cache.png)', '']
    (out/'bench_cache.md').write_text('\n'.join(lines), encoding='utf-8')
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    items = {'PNG decode (1 core)': png_s, **{f'cache loader @{s} w={w}': v for (s, w), v in loader.items()}, **models}
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(list(items), list(items.values()), color=['grey'] + ['tab:blue'] * len(loader) + ['tab:orange'] * len(models))
    ax.set_xscale('log'); ax.set_xlabel('images per second (log)'); ax.set_title('Loader vs model throughput on this CPU')
    fig.tight_layout(); fig.savefig(out/'bench_cache.png', dpi=110)
    print((out/'bench_cache.md').read_text())


if __name__ == '__main__':
    main()
