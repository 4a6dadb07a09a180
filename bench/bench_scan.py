"""Time the scan at each check level against the bare loop that does the same work, on trees written to a temporary folder.

- names: `scan(check='names')` against a bare os.scandir walk of a file-name-only tree (zero-byte files); target 3x.
- labels: `scan(check='labels', no_cache=True)` against a bare open + read + json.loads loop over the same label JSONs
  in a process pool of the same number of workers (same chunking); target 1.5x.
- images: `scan(check='images', no_cache=True)` against a bare Pillow open + verify loop over the same PNGs, same
  workers (reported, no target: the scan also parses every JSON, which the labels row prices).

Every path is built by `pillsnap.layout`. Medians of --repeats runs after one untimed warm-up of each.
Writes reports/bench_scan.md and reports/bench_scan.png.

Run: .venv/bin/python bench/bench_scan.py [--images 300000] [--labels 100000] [--pngs 1500] [--workers 2] [--repeats 3]
"""
from __future__ import annotations
import argparse, contextlib, io, json, os, platform, resource, statistics, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm.auto import tqdm
from pillsnap.layout import NAME, file_stem, image_path, label_files, split_stem
from pillsnap.outputs import kst_now, package_versions, write_text
from pillsnap.scan import read_inventory, scan

TARGETS = {'names': 3.0, 'labels': 1.5}
LATITUDES = (60, 70, 75, 90)
CHUNK = 256  # files per pool task, as `pillsnap.scan.run_chunked` sends them
# The real release has 2.3M label JSONs. A scan has costs that do not grow with the tree (some hundred pandas/Arrow
# calls at ~0.1 ms each, the pool start, the run record, the output files): 0.1-0.2 CPU-s for a 530-file tree, a
# quarter of the bare loop over 20k files but a few % over 100k and nothing over 2.3M. 100k labels (a tree built in
# about a minute) keeps the ratio about the per-file work a user of the real data waits for.
LABELS = 100_000


def fields(i: int) -> tuple:
    "f2..f7 of the `i`-th image of a class: 72 camera angles per capture session."
    session, angle = divmod(i, 72)
    return session // 18, session // 6 % 3, session // 3 % 2, session % 3, LATITUDES[angle // 18], angle % 18 * 20


def touch(path: str, data: bytes = b''):
    with open(path, 'wb') as f: f.write(data)


def label_doc(code: str, stem: str, size: tuple[int, int]) -> bytes:
    "An AIHub-style label JSON (the fields of AIHUB_FORMAT.md) for the image `stem` of `code`."
    n = int(code[2:])
    image = dict(file_name=f'{stem}.png', width=size[0], height=size[1], imgfile=f'{stem}.png', drug_N=code,
                 dl_mapping_code=code, dl_idx=str(n - 1), dl_name=f'합성정 {n % 500}mg', dl_name_en=f'Hapseong Tab. {n % 500}mg',
                 dl_company='합성제약', di_edi_code='A11A0330', dl_material='성분', chart='흰색의 원형 정제',
                 drug_shape='원형', color_class1='하양', color_class2='', line_front='', line_back='',
                 print_front=f'HS {n % 500}', print_back='', mark_code_front='', mark_code_back='', drug_dir='앞면',
                 back_color='연회색 배경', light_color='주백색', camera_la=90, camera_lo=0, size=200, item_seq=200000000 + n)
    return json.dumps(dict(images=[image], type='images', annotations=[dict(
        area=40000, iscrowd=0, bbox=[300, 500, 200, 200], category_id=1, ignore=0, segmentation=[], id=1, image_id=1)],
        categories=[dict(supercategory='pill', id=1, name=image['dl_name'])]), ensure_ascii=False).encode()


def build_tree(root: Path, images: int, classes: int, folders: int, png: bytes | None = None,
               labels: bool = False, size=(976, 1280)) -> list[str]:
    "Single-pill images and their label JSONs over `folders` TS_n/TL_n folders; the label paths (absolute)."
    per_class = [images // classes + (c < images % classes) for c in range(classes)]
    out = []
    for c, n in enumerate(tqdm(per_class, desc='build tree', unit='class', leave=False)):
        code, k = f'K-{c + 1:06d}', c % folders + 1
        for i in range(n):
            stem = file_stem(code, fields(i))
            img, lab = root/image_path('train', [code], stem, k), root/label_files('train', [code], stem, k)[0]
            if i == 0: img.parent.mkdir(parents=True); lab.parent.mkdir(parents=True)
            touch(str(img), png or b'')
            touch(str(lab), label_doc(code, stem, size) if labels else b'')
            out.append(str(lab))
    return out


def bare_walk(root: Path) -> int:
    "Files under `root`, counted by the leanest os.scandir walk: the floor any scanner pays."
    n, stack = 0, [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(): stack.append(e.path)
                else: n += 1
    return n


def parse_chunk(paths: list[str]) -> int:
    "open + read + json.loads of each file: the bare work of the labels level."
    for p in paths:
        with open(p, 'rb') as f: json.loads(f.read())
    return len(paths)


def verify_chunk(paths: list[str]) -> int:
    "Pillow open + verify of each PNG: the bare work of the images level."
    for p in paths:
        with Image.open(p) as im: im.size; im.verify()
    return len(paths)


def bare_pool(fn, paths: list[str], workers: int) -> int:
    "`fn` over `paths` in chunks of CHUNK, in a pool of `workers` processes (in this process for 1)."
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    if workers <= 1: return sum(map(fn, chunks))
    with ProcessPoolExecutor(workers) as pool: return sum(pool.map(fn, chunks))


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def cpu_seconds() -> float:
    "User + system CPU seconds of this process and of its children that ended (the pool workers, once shut down)."
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def timed_cpu(fn) -> tuple[object, float, float]:
    "The result of `fn`, its wall seconds and its CPU seconds (this process and the pool it forked and shut down)."
    cpu = cpu_seconds()
    result, wall = timed(fn)
    return result, wall, cpu_seconds() - cpu


def quiet_scan(root: Path, out: Path, **kw):
    "`scan` without progress bars, its summary line swallowed."
    with contextlib.redirect_stderr(io.StringIO()): return scan(root, out, progress=False, **kw)


def race(bare, scanned, repeats: int) -> tuple[list[float], list[float], object, dict]:
    "Alternate runs of the bare loop and the scan after one untimed warm-up of each; their times, the last scan, CPU seconds."
    bare(); scanned()
    b, s, res, cpu = [], [], None, {'bare': [], 'scan': []}
    for i in range(repeats):
        _, t, c = timed_cpu(bare); b.append(t); cpu['bare'].append(c)
        res, t, c = timed_cpu(scanned); s.append(t); cpu['scan'].append(c)
        print(f'  run {i}: bare {b[-1]:.3f} s ({cpu["bare"][-1]:.2f} CPU s), scan {s[-1]:.3f} s ({cpu["scan"][-1]:.2f} CPU s), '
              f'ratio {s[-1] / b[-1]:.2f} (CPU {cpu["scan"][-1] / cpu["bare"][-1]:.2f})')
    return b, s, res, cpu


def name_parsing(names: pd.Series) -> dict:
    "Seconds to parse the file-name column: pandas `str.extract` (Python `re`) against the Arrow kernels scan uses."
    import re
    fields_re = re.compile(r'^(K-\d{6}(?:-\d{6})*)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)\.png$')
    arrow = lambda: (pc.match_substring_regex(pa.array(names), f'^{NAME}$'), split_stem(pc.utf8_slice_codeunits(pa.array(names), 0, -4)))
    return {'pandas str.extract': timed(lambda: names.str.extract(fields_re))[1], 'Arrow match + split': timed(arrow)[1]}


def bench_names(d: Path, images: int, classes: int, folders: int, workers: int, repeats: int) -> dict:
    root, out = d/'names', d/'names_out'
    build_tree(root, images, classes, folders)
    os.sync()
    print(f'names level: {2 * images:,} zero-byte files')
    bare, scans, res, cpu = race(lambda: bare_walk(root), lambda: quiet_scan(root, out, check='names', workers=workers), repeats)
    serial = [timed(lambda: quiet_scan(root, out, check='names', workers=1))[1] for _ in range(repeats)]
    assert len(res.inventory) == images, len(res.inventory)
    names = read_inventory(out, columns=['path']).path.str.rsplit('/', n=1).str[-1]
    return dict(files=2 * images, bare=bare, scan=scans, cpu=cpu, serial=serial, inventory=len(res.inventory),
                parquet_mb=(out/'inventory.parquet').stat().st_size / 1e6, parsing=name_parsing(names))


def bench_labels(d: Path, n: int, classes: int, folders: int, workers: int, repeats: int) -> dict:
    root, out = d/'labels', d/'labels_out'
    paths = build_tree(root, n, classes, folders, png=b'\x89PNG\r\n\x1a\n', labels=True)
    os.sync()
    kb = np.mean([os.path.getsize(p) for p in paths[:200]]) / 1e3
    print(f'labels level: {n:,} label JSONs of {kb:.1f} kB')
    bare, scans, res, cpu = race(lambda: bare_pool(parse_chunk, paths, workers),
                            lambda: quiet_scan(root, out, check='labels', workers=workers, no_cache=True), repeats)
    assert len(res.inventory) == n and res.counts['json_read'] == n, (len(res.inventory), res.counts)
    quiet_scan(root, out, check='labels', workers=workers)  # fill the cache
    cached = statistics.median(timed(lambda: quiet_scan(root, out, check='labels', workers=workers))[1] for _ in range(repeats))
    return dict(files=n, kb=kb, bare=bare, scan=scans, cpu=cpu, cached=cached)


def bench_images(d: Path, n: int, classes: int, folders: int, workers: int, repeats: int, size=(976, 1280)) -> dict:
    root, out = d/'images', d/'images_out'
    rng = np.random.default_rng(42)
    tray = np.linspace(150, 210, size[1], dtype=np.float32)[:, None, None] * np.ones((1, size[0], 3), np.float32)
    pixels = np.clip(tray + rng.normal(0, 6, tray.shape), 0, 255).astype(np.uint8)  # a lit tray with sensor noise
    buf = io.BytesIO(); Image.fromarray(pixels).save(buf, format='PNG'); png = buf.getvalue()
    labels = build_tree(root, n, classes, folders, png=png, labels=True, size=size)
    pngs = [p.replace('/labels/single/TL_', '/images/single/TS_').replace('_json/', '/')[:-5] + '.png' for p in labels]
    assert all(os.path.exists(p) for p in pngs[:10])
    os.sync()
    print(f'images level: {n:,} PNGs of {len(png) / 1e6:.2f} MB ({size[0]}x{size[1]})')
    bare, scans, res, cpu = race(lambda: bare_pool(verify_chunk, pngs, workers),
                            lambda: quiet_scan(root, out, check='images', workers=workers, no_cache=True), repeats)
    assert len(res.inventory) == n and res.counts['images_verified'] == n, (len(res.inventory), res.counts)
    json_bare = statistics.median(timed(lambda: bare_pool(parse_chunk, labels, workers))[1] for _ in range(repeats))
    return dict(files=n, mb=len(png) / 1e6, size=size, bare=bare, scan=scans, cpu=cpu, json_bare=json_bare)


def machine() -> str:
    info = Path('/proc/cpuinfo')
    model = next((l.split(':', 1)[1].strip() for l in info.read_text().splitlines() if l.startswith('model name')),
                 platform.machine()) if info.exists() else platform.machine()
    return f'{os.cpu_count()} CPU cores ({model}), {platform.system()} {platform.release()}'


def ratio(r: dict) -> float: return statistics.median(r['scan']) / statistics.median(r['bare'])


def cpu_ratio(r: dict) -> float:
    "Median over runs of scan CPU seconds / bare CPU seconds (each scan against the bare run just before it)."
    return statistics.median(s / b for s, b in zip(r['cpu']['scan'], r['cpu']['bare']))


def cpu_rows(r: dict) -> str:
    "Table rows of the CPU seconds of each run."
    c = r['cpu']
    return (f"| CPU seconds of the bare loop (process + its pool) | {runs(c['bare'])} | {statistics.median(c['bare']):.3f} |\n"
            f"| CPU seconds of the scan (process + its pool) | {runs(c['scan'])} | {statistics.median(c['scan']):.3f} |")


def figure(results: dict, path: str):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    levels = list(results)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    x = np.arange(len(levels))
    bare = [statistics.median(results[l]['bare']) for l in levels]
    scans = [statistics.median(results[l]['scan']) for l in levels]
    ax.bar(x - 0.2, bare, 0.4, label='bare loop (same work, same workers)', color='#9aa')
    ax.bar(x + 0.2, scans, 0.4, label='pillsnap scan', color='#369')
    for i, l in enumerate(levels):
        target = f' (target ≤ {TARGETS[l]:g}x)' if l in TARGETS else ''
        ax.text(x[i] + 0.2, scans[i], f'{ratio(results[l]):.2f}x{target}', ha='center', va='bottom', fontsize=8)
    ax.set_xticks(x, [f"{l}\n{results[l]['files']:,} files" for l in levels])
    ax.set_ylabel('seconds (median)'); ax.legend(fontsize=8, loc='upper left'); ax.set_title('scan vs bare loop, by check level')
    fig.tight_layout(); fig.savefig(path, dpi=120)


def verdict(r: float, level: str) -> str:
    return f'**{"meets" if r <= TARGETS[level] else "MISSES"} the ≤ {TARGETS[level]:g}x target**'


def runs(xs) -> str: return ', '.join(f'{x:.3f}' for x in xs)


def report_markdown(results: dict, workers: int, load: tuple = (), figure_name: str = 'bench_scan.png') -> str:
    v = package_versions()
    loads = ' and '.join(', '.join(f'{x:.1f}' for x in l) for l in load)
    md = [f"""# Benchmark: the scan at each check level against a bare loop doing the same work

Run {kst_now()} by `bench/bench_scan.py` on {machine()}, Python {v['python']}, pandas {v['pandas']},
numpy {v['numpy']}, pyarrow {v['pyarrow']}, Pillow {Image.__version__}. Trees are written to a temporary folder with
paths from `pillsnap.layout`; times are in seconds, page cache warm, medians after one untimed warm-up of each.
The bare loops run in a process pool of the same {workers} workers with the same chunking ({CHUNK} files per task).
Load average (1/5/15 min) at the start and at the end: {loads}; above the core count other processes share the
cores, so seconds are not comparable across runs, while the ratios (alternating runs of the two) are less affected.

![scan vs bare loop]({figure_name})

| level | files | bare loop (median s) | scan (median s) | wall ratio (of the medians) | CPU-seconds ratio (median of the runs' ratios) | target |
|---|---|---|---|---|---|---|"""]
    for l, r in results.items():
        md.append(f"| {l} | {r['files']:,} | {statistics.median(r['bare']):.3f} | {statistics.median(r['scan']):.3f} | "
                  f"{ratio(r):.2f}x | {cpu_ratio(r):.2f}x | {'≤ %gx' % TARGETS[l] if l in TARGETS else '—'} |")
    if 'labels' in results:
        r = results['labels']
        md.append(f"""
## labels: `scan(check='labels', no_cache=True)` against open + read + `json.loads`

{r['files']:,} AIHub-style label JSONs ({r['kb']:.1f} kB each, every field of AIHUB_FORMAT.md) with their images
(8-byte files: the labels level stats them for zero-byte files but does not open them). The tree is large enough
that the scan's fixed costs (0.1-0.2 CPU-s for a 530-file tree: pool start, run record, output files, some hundred
pandas/Arrow calls) do not decide the ratio: the real release has 2.3M labels, where they are nothing.

| | each run | median |
|---|---|---|
| bare loop: open + read + `json.loads` per file | {runs(r['bare'])} | {statistics.median(r['bare']):.3f} |
| `scan(check='labels', no_cache=True)` | {runs(r['scan'])} | {statistics.median(r['scan']):.3f} |
{cpu_rows(r)}

**Ratio {ratio(r):.2f}x** (CPU seconds {cpu_ratio(r):.2f}x): {verdict(ratio(r), 'labels')}. The scan does everything else too: the walk, name parsing
and matching (in the main process while the pool reads the JSONs), a stat of every image (zero-byte check, in the
walkers), the label checks, the inventory and quarantine writing; with `no_cache` it does not stat the JSONs. A re-scan of the unchanged tree takes {r['cached']:.3f} s (every JSON from the cache).""")
    if 'images' in results:
        r = results['images']
        md.append(f"""
## images: `scan(check='images', no_cache=True)` against Pillow open + verify

{r['files']:,} PNGs of {r['size'][0]}x{r['size'][1]} ({r['mb']:.2f} MB each, the real AIHub size) with their label JSONs.

| | each run | median |
|---|---|---|
| bare loop: Pillow open + `verify()` per PNG | {runs(r['bare'])} | {statistics.median(r['bare']):.3f} |
| `scan(check='images', no_cache=True)` | {runs(r['scan'])} | {statistics.median(r['scan']):.3f} |
{cpu_rows(r)}
| (for scale: the bare JSON loop over the same labels) | | {r['json_bare']:.3f} |

**Ratio {ratio(r):.2f}x** (CPU seconds {cpu_ratio(r):.2f}x; no target: the images level also parses every label JSON, which the bare verify loop
does not; the labels row above prices that part).""")
    if 'names' in results:
        r = results['names']
        md.append(f"""
## names: `scan(check='names')` against a bare `os.scandir` walk

{r['files']:,} zero-byte files (single-pill images and their labels); the walk only counts files.

| | each run | median |
|---|---|---|
| bare `os.scandir` walk | {runs(r['bare'])} | {statistics.median(r['bare']):.3f} |
| `scan(root, out, check='names')` | {runs(r['scan'])} | {statistics.median(r['scan']):.3f} |
{cpu_rows(r)}
| the same with `workers=1` | {runs(r['serial'])} | {statistics.median(r['serial']):.3f} |

**Ratio {ratio(r):.2f}x** (CPU seconds {cpu_ratio(r):.2f}x): {verdict(ratio(r), 'names')}; with `workers=1` {statistics.median(r['serial']) / statistics.median(r['bare']):.2f}x.
The inventory has {r['inventory']:,} rows ({r['parquet_mb']:.1f} MB parquet). At `check='names'` no file is opened or
stat-ed, so zero-byte files are not flagged (the labels level flags them).

Why Arrow kernels parse the names (one run on the {r['inventory']:,} image names):

| | seconds |
|---|---|
""" + '\n'.join(f'| {k} | {s:.2f} |' for k, s in r['parsing'].items()))
    return '\n'.join(md) + '\n'


def main(images: int = 300_000, labels: int = LABELS, pngs: int = 1_500, classes: int = 3_000, folders: int = 40,
         workers: int = 2, repeats: int = 3, levels: str = 'labels,images,names', report: str = 'reports/bench_scan.md'):
    results, load = {}, [os.getloadavg()]
    with tempfile.TemporaryDirectory() as d:
        for level in levels.split(','):
            if level == 'labels': results[level] = bench_labels(Path(d), labels, max(1, labels // 100), folders, workers, repeats)
            elif level == 'images': results[level] = bench_images(Path(d), pngs, max(1, pngs // 100), min(folders, 8), workers, repeats)
            elif level == 'names': results[level] = bench_names(Path(d), images, classes, folders, workers, repeats)
            else: raise ValueError(f'unknown level {level!r}')
            print(f'{level}: ratio {ratio(results[level]):.2f}x')
            figure(results, str(Path(report).with_suffix('.png')))  # after each level: a cut-short run keeps what it measured
            write_text(report, report_markdown(results, workers, (*load, os.getloadavg()), Path(report).with_suffix('.png').name))
            print(f'wrote {report}')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=300_000, help='images of the names-level tree')
    parser.add_argument('--labels', type=int, default=LABELS, help='label JSONs of the labels-level tree (see LABELS)')
    parser.add_argument('--pngs', type=int, default=1_500, help='full-size PNGs of the images-level tree')
    parser.add_argument('--classes', type=int, default=3_000)
    parser.add_argument('--folders', type=int, default=40)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--levels', default='labels,images,names')
    parser.add_argument('--report', default='reports/bench_scan.md')
    main(**vars(parser.parse_args()))
