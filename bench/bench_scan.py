"""Time `scan(check='names')` against a bare os.scandir walk of the same file-name-only AIHub tree.

Builds, under a temporary folder, 300,000 zero-byte single-pill images and their 300,000 zero-byte label JSONs in the
AIHub layout (3,000 class folders spread over 40 TS_n/TL_n folders), then times a bare scandir walk that only counts
files and `pillsnap.scan.scan(..., check='names')` (walk, name parsing, matching, inventory and quarantine writing),
median of 3 each after one untimed warm-up. Target: the scan within 3x the bare walk. Writes reports/bench_scan.md.

Run: .venv/bin/python bench/bench_scan.py [--images 300000] [--classes 3000] [--folders 40] [--repeats 3]
"""
from __future__ import annotations
import argparse, contextlib, io, os, platform, re, statistics, tempfile, time
from pathlib import Path
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm
from pillsnap.outputs import kst_now, package_versions, write_text
from pillsnap.scan import NAME, read_inventory, scan, split_stem

TARGET_RATIO = 3.0
LATITUDES = (60, 70, 75, 90)


def stem(code: str, i: int) -> str:
    "The file stem of the `i`-th image of class `code`: 72 camera angles per capture session."
    session, angle = divmod(i, 72)
    f2, f3, f4, f5 = session // 18, session // 6 % 3, session // 3 % 2, session % 3
    return f'{code}_{f2}_{f3}_{f4}_{f5}_{LATITUDES[angle // 18]}_{angle % 18 * 20:03d}_200'


def touch(path: str):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def build_tree(root: Path, images: int, classes: int, folders: int) -> dict:
    "Zero-byte images and labels of `classes` single-pill classes over `folders` TS_n/TL_n folders; the counts."
    per_class = [images // classes + (c < images % classes) for c in range(classes)]
    for c, n in enumerate(tqdm(per_class, desc='build tree', unit='class')):
        code, ts = f'K-{c + 1:06d}', c % folders + 1
        image_dir = root/f'train/images/single/TS_{ts}_single/{code}'
        label_dir = root/f'train/labels/single/TL_{ts}_single/{code}_json'
        image_dir.mkdir(parents=True); label_dir.mkdir(parents=True)
        for i in range(n):
            s = stem(code, i)
            touch(f'{image_dir}/{s}.png'); touch(f'{label_dir}/{s}.json')
    return dict(images=images, labels=images, classes=classes, ts_folders=folders, files=2 * images)


def bare_walk(root: Path) -> int:
    "Files under `root`, counted by the leanest os.scandir walk: the floor any scanner pays."
    n, stack = 0, [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(): stack.append(e.path)
                else: n += 1
    return n


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def quiet_scan(root: Path, out: Path, workers: int | None = None):
    "`scan(check='names')` without progress bars, its summary line swallowed."
    with contextlib.redirect_stderr(io.StringIO()): return scan(root, out, check='names', workers=workers, progress=False)


def name_parsing(names: pd.Series) -> dict:
    "Seconds to parse the file-name column: pandas `str.extract` (Python `re`) against the Arrow kernels scan uses."
    fields = re.compile(r'^(K-\d{6}(?:-\d{6})*)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)\.png$')
    arrow = lambda: (pc.match_substring_regex(pa.array(names), f'^{NAME}$'), split_stem(pc.utf8_slice_codeunits(pa.array(names), 0, -4)))
    return {'pandas str.extract': timed(lambda: names.str.extract(fields))[1], 'Arrow match + split': timed(arrow)[1]}


def machine() -> str:
    model = next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines()
                  if l.startswith('model name')), platform.processor() or platform.machine()) if Path('/proc/cpuinfo').exists() else platform.machine()
    return f'{os.cpu_count()} CPU cores ({model}), {platform.system()} {platform.release()}'


def report_markdown(counts: dict, walked: int, bare: list[float], scans: list[float], serial: list[float],
                    inv_rows: int, quarantined: int, inv_mb: float, parsing: dict) -> str:
    v = package_versions()
    ratio = statistics.median(scans) / statistics.median(bare)
    verdict = 'meets' if ratio <= TARGET_RATIO else 'MISSES'
    runs = lambda xs: ', '.join(f'{x:.3f}' for x in xs)
    parse = '\n'.join(f'| {k} | {s:.2f} |' for k, s in parsing.items())
    return f"""# Benchmark: `scan(check='names')` against a bare scandir walk

Run {kst_now()} by `bench/bench_scan.py` on {machine()},
Python {v['python']}, pandas {v['pandas']}, numpy {v['numpy']}, pyarrow {v['pyarrow']}.

## Tree (file names only: zero-byte files in the AIHub layout, in a temporary folder)

| | count |
|---|---|
| single-pill images (`train/images/single/TS_n_single/K-XXXXXX/*.png`) | {counts['images']:,} |
| label JSONs (`train/labels/single/TL_n_single/K-XXXXXX_json/*.json`) | {counts['labels']:,} |
| class folders (each under images and labels) | {counts['classes']:,} |
| TS_n / TL_n folders | {counts['ts_folders']} / {counts['ts_folders']} |
| files found by the bare walk | {walked:,} |

## Timing (seconds; page cache warm, one untimed warm-up run of each first)

| | each run | median |
|---|---|---|
| bare `os.scandir` walk (counts files, keeps nothing) | {runs(bare)} | {statistics.median(bare):.3f} |
| `scan(root, out, check='names')` | {runs(scans)} | {statistics.median(scans):.3f} |
| the same with `workers=1` (the walk in this process too) | {runs(serial)} | {statistics.median(serial):.3f} |

**Ratio {ratio:.2f}x** (median scan / median walk). Target ≤ {TARGET_RATIO:.0f}x: **{verdict} the target**.
With `workers=1` the ratio is {statistics.median(serial) / statistics.median(bare):.2f}x.

The scan includes the walk, parsing and matching of all {counts['files']:,} names, the inventory
({inv_rows:,} rows, {inv_mb:.1f} MB parquet), the quarantine ({quarantined} rows) and run.json, with the default
workers (os.cpu_count()) and no progress bar. At `check='names'` no file is opened or stat-ed, so the zero-byte
files are not flagged.

## Why Arrow kernels parse the names (one run on the {counts['images']:,} image names)

| | seconds |
|---|---|
{parse}
"""


def main(images: int = 300_000, classes: int = 3_000, folders: int = 40, repeats: int = 3,
         report: str = 'reports/bench_scan.md'):
    with tempfile.TemporaryDirectory() as d:
        root, out = Path(d)/'data', Path(d)/'out'
        counts, build_s = timed(lambda: build_tree(root, images, classes, folders))
        print(f'built {counts["files"]:,} files in {build_s:.1f} s')
        os.sync()  # let the kernel write the new inodes back now, not during the timed runs
        bare_walk(root); quiet_scan(root, out)  # warm-up: page cache, imports
        bare, scans, serial = [], [], []
        for i in range(repeats):
            walked, s = timed(lambda: bare_walk(root)); bare.append(s)
            res, s = timed(lambda: quiet_scan(root, out)); scans.append(s)
            serial.append(timed(lambda: quiet_scan(root, out, workers=1))[1])
            print(f'run {i}: bare walk {bare[-1]:.3f} s, scan {scans[-1]:.3f} s (workers=1: {serial[-1]:.3f} s), '
                  f'ratio {scans[-1] / bare[-1]:.2f}')
        assert walked == counts['files'] and len(res.inventory) == images, (walked, len(res.inventory))
        names = read_inventory(out, columns=['path']).path.str.rsplit('/', n=1).str[-1]
        parsing = name_parsing(names)
        md = report_markdown(counts, walked, bare, scans, serial, len(res.inventory), len(res.quarantine),
                             (out/'inventory.parquet').stat().st_size / 1e6, parsing)
    ratio = statistics.median(scans) / statistics.median(bare)
    print(f'median bare walk {statistics.median(bare):.3f} s, median scan {statistics.median(scans):.3f} s, '
          f'ratio {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x); workers=1: {statistics.median(serial):.3f} s')
    print(', '.join(f'{k} {s:.2f} s' for k, s in parsing.items()))
    write_text(report, md)
    print(f'wrote {report}')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=300_000)
    parser.add_argument('--classes', type=int, default=3_000)
    parser.add_argument('--folders', type=int, default=40)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--report', default='reports/bench_scan.md')
    main(**vars(parser.parse_args()))
