"""Copy-paste combinations end to end: synth -> scan -> manifest -> `pillsnap synth-combos` -> `manifest --strategy
synth_combo` -> convert-yolo and the crop cache, on a small synthetic AIHub tree."""
import json
from pathlib import Path
import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from pillsnap.manifest import pill_boxes, read_manifest
from pillsnap.synth import synth
from pillsnap.synthcombo import Cutout, cut_pill, paste_pills, read_synth_combos

OVERLAP, MIN_VISIBLE = 0.2, 0.6


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "A work folder with a max_combo manifest, 24 synthetic combinations and a synth_combo manifest, all made by the CLI."
    work = tmp_path_factory.mktemp('combos')
    synth(work/'data', classes=8, per_class=4, combos=4, progress=False)
    run_cli('scan', '--data-root', work/'data', '--check', 'labels', '--work-dir', work)
    run_cli('manifest', '--stage', 3, '--strategy', 'max_combo', '--samples', 30, '--classes', 8, '--allow-shortfall',
            '--work-dir', work)
    run_cli('synth-combos', '--stage', 3, '--strategy', 'max_combo', '--count', 24, '--pills', '2-5',
            '--overlap', OVERLAP, '--min-visible', MIN_VISIBLE, '--work-dir', work)
    run_cli('manifest', '--stage', 3, '--strategy', 'synth_combo', '--samples', 40, '--classes', 8, '--allow-shortfall',
            '--work-dir', work)
    return work


def _iou(a, b) -> float:
    (ax, ay, aw, ah), (bx, by, bw, bh) = a, b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


def _flat(cut: Cutout, colour) -> Cutout:
    "The same pill (same mask) in one flat colour."
    rgba = cut.rgba.copy(); rgba[..., :3] = colour
    return Cutout(rgba, cut.code)


def _colour_box(image, colour) -> list:
    "Box of the pixels where `colour`'s channel dominates the other two."
    c, img = int(np.argmax(colour)), image.astype(int)
    ys, xs = np.nonzero(img[..., c] - np.delete(img, c, axis=2).max(axis=2) > 40)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_boxes_match_the_visible_pixels_of_the_pasted_pills(work):
    "Real cutouts pasted twice with the same seed: once on a real background, once flat-coloured on grey; the pixels of each colour give the box."
    train = read_manifest(work/'stage3'/'max_combo', 'train')
    singles = train[train.kind == 'single'].head(3)
    cuts = [cut_pill(cv2.cvtColor(cv2.imread(str(work/'data'/p)), cv2.COLOR_BGR2RGB), pill_boxes(b)[0], str(i))
            for i, (p, b) in enumerate(zip(singles.path, singles.boxes))]  # codes = index: two may share a K-code
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    bg = np.full((160, 120, 3), 128, np.uint8)
    for seed in range(10):
        real = paste_pills(bg, cuts, np.random.default_rng(seed), overlap=0.3, min_visible=0.5)
        flat = paste_pills(bg, [_flat(c, col) for c, col in zip(cuts, colours)], np.random.default_rng(seed), overlap=0.3, min_visible=0.5)
        assert real.boxes == flat.boxes and len(real.boxes) >= 2
        for box, code in zip(flat.boxes, flat.codes):
            colour = colours[int(code)]
            assert np.abs(np.subtract(_colour_box(flat.image, colour), box)).max() <= 1, (seed, code, box)


def test_written_boxes_lie_inside_the_pasted_pill_and_the_image(work):
    t = read_synth_combos(work/'synth_combos')
    assert len(t) == 24 and t.n_pills.between(2, 5).all()
    for path, boxes, full, w, h in zip(t.path, t.boxes, t.full_boxes, t.width, t.height):
        assert cv2.imread(path).shape[:2] == (h, w)
        for (x, y, bw, bh), (X, Y, W, H) in zip(boxes, full):
            assert X <= x and Y <= y and x + bw <= X + W and y + bh <= Y + H and 0 <= X and X + W <= w and Y + H <= h


def test_overlap_never_exceeds_the_limit_and_every_pill_stays_visible(work):
    t = read_synth_combos(work/'synth_combos')
    ious = [_iou(a, b) for full in t.full_boxes for i, a in enumerate(full) for b in full[:i]]
    assert max(ious) <= OVERLAP and min(v for vis in t.visible for v in vis) >= MIN_VISIBLE
    run = json.loads((work/'synth_combos'/'run.json').read_text())
    assert (run['seed'], run['params']['overlap'], run['config']['seed']) == (42, OVERLAP, 42)


def test_no_synthetic_image_in_val_or_test_manifests(work):
    m = work/'stage3'/'synth_combo'
    synthetic = set(read_synth_combos(work/'synth_combos').path)
    train, val, test = (read_manifest(m, s) for s in ('train', 'val', 'test'))
    assert train.synthetic.sum() > 0 and set(train.path[train.synthetic]) <= synthetic
    for df in (val, test): assert not df.synthetic.any() and not set(df.path) & synthetic
    made_from = set(read_synth_combos(work/'synth_combos').set_index('path').sources[train.path[train.synthetic]].str.split('|').explode())
    assert made_from and not made_from & (set(val.path) | set(test.path))  # no pill or background of a held-out image
    report = json.loads((m/'sampling_report.json').read_text())
    src = report['combo_sources']
    assert src['synthetic'] == train.synthetic.sum() and src['real']['val'] == (val.kind == 'combo').sum()
    assert report['achieved']['train+val'] == {'single': 24, 'combo': 16, 'total': 40}  # 60:40


def test_yolo_conversion_and_cache_accept_synthetic_rows(work):
    m = work/'stage3'/'synth_combo'
    run_cli('convert-yolo', '--manifest', m, '--work-dir', work)
    train = read_manifest(m, 'train')
    for row in train[train.synthetic].itertuples():
        lines = (m/'yolo'/'labels'/'train'/f'{Path(row.path).stem}.txt').read_text().splitlines()
        assert len(lines) == row.n_pills
        x, y, w, h = pill_boxes(row.boxes)[0]
        cx, cy = (float(v) for v in lines[0].split()[1:3])
        assert abs(cx * row.width - (x + w / 2)) < 1 and abs(cy * row.height - (y + h / 2)) < 1
    run_cli('cache', '--manifest', m, '--size', 32, '--workers', 1, '--work-dir', work)
    index = pd.read_parquet(next((work/'cache'/'index').glob('*.parquet')))
    synth_rows = index[index.path.isin(train.path[train.synthetic])]
    assert len(synth_rows) == train[train.synthetic].n_pills.sum() and synth_rows.ok.all()
