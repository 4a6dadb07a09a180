"""TwoStagePredictor and `predict` on a real tiny run: exact pill counts on combination images, pixel boxes inside the
image, errors per unreadable file while the batch goes on, the class-map check at load."""
import json, shutil
import numpy as np
import pytest
from PIL import Image
from eval_run import split_files, tiny_run  # noqa: F401 (fixture)
from pillsnap.predict import RunMismatch, TwoStagePredictor, crop_tensor, foreground_box, predict


COMBOS, CONF = 6, 0.5  # detection confidence for the count (tiny 15-epoch detector: see the report for the whole split)


@pytest.fixture(scope='module')
def predictor(tiny_run):
    return TwoStagePredictor(tiny_run)


def test_combo_returns_every_pill_with_pixel_boxes_inside_the_image(tiny_run, predictor):
    files, df = split_files(tiny_run, 'test', 'combo')
    files, df = files[:COMBOS], df[:COMBOS]  # the first test-split combinations (official val tree), not picked by result
    assert len(files) == COMBOS
    preds = predictor.predict(files, mode='combo', conf=CONF)
    assert [len(p.pills) for p in preds] == df.n_pills.tolist()  # exact: every pill found, nothing extra
    for p, f in zip(preds, files):
        w, h = Image.open(f).size
        assert (p.width, p.height) == (w, h) and p.mode == 'combo'
        for q in p.pills:
            x1, y1, x2, y2 = q.box_xyxy
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert np.allclose(q.box_norm, [x1 / w, y1 / h, x2 / w, y2 / h], atol=1e-5)
            assert q.code in predictor.codes and q.name and 0 < q.score <= 1 and q.det_score >= CONF
            assert [t['code'] for t in q.top_k][0] == q.code and len(q.top_k) == 5
        assert max(max(q.box_xyxy) for q in p.pills) > 1  # pixels, not normalised
        assert set(p.timing_ms) == {'load', 'detect', 'classify', 'total'} and p.timing_ms['detect'] > 0


def test_single_mode_one_pill_per_photo_from_the_classifier_crop(tiny_run, predictor):
    files, df = split_files(tiny_run, 'test', 'single')
    files = files[:8]
    preds = predictor.predict(files, mode='single', top_k=3)
    assert all(len(p.pills) == 1 and len(p.pills[0].top_k) == 3 for p in preds)
    for f, p in zip(files, preds):  # the detected pill's crop; when nothing is detected, the pill found on the tray
        if p.pills[0].det_score is None:
            fg = foreground_box(Image.open(f).convert('RGB')) or [0, 0, p.width, p.height]
            assert p.pills[0].box_xyxy == [round(v, 2) for v in fg]
    whole = TwoStagePredictor(tiny_run, single_crop='whole')
    c = whole.classifier
    x = np.stack([crop_tensor(Image.open(f).convert('RGB'), None, c.transform_cfg, c.meta['cache_size']) for f in files])
    top1 = [whole.codes[i] for i in c.logits(x).argmax(1)]
    wp = whole.predict(files, mode='single')
    assert [p.pills[0].code for p in wp] == top1 and all(p.pills[0].det_score is None for p in wp)
    assert all(p.pills[0].box_xyxy == [0, 0, p.width, p.height] for p in wp)
    d = json.loads(preds[0].to_json())
    assert set(d) >= {'image', 'mode', 'pills', 'timing_ms'} and d['pills'][0]['code'] == preds[0].pills[0].code


def test_unreadable_files_are_errors_and_the_batch_goes_on(tiny_run, tmp_path, capsys):
    files, _ = split_files(tiny_run, 'test', 'combo')
    bad, missing = tmp_path/'broken.png', tmp_path/'missing.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n not really')
    res = predict([files[0], bad, missing, files[1]], mode='combo', run=tiny_run, save_vis=tmp_path/'vis', json=True)
    assert [p.image for p in res.predictions] == [str(files[0]), str(files[1])]
    assert res.n_failed == 2
    assert 'broken.png: cannot read the image' in res.errors[0]['error']
    assert 'missing.png: no such file' in res.errors[1]['error']
    out = capsys.readouterr()
    assert [json.loads(l)['image'] for l in out.out.splitlines()] == [str(files[0]), str(files[1])]
    assert 'broken.png' in out.err
    assert len(res.vis) == 2 and all(Image.open(v).size == Image.open(files[0]).size for v in res.vis)


def test_weights_instead_of_run_and_mode_checks(tiny_run):
    files, _ = split_files(tiny_run, 'test', 'single')
    res = predict(files[:2], mode='single', weights=[tiny_run/'detector'/'weights'/'best.pt', tiny_run/'classifier'/'best.pt'])
    assert res.n_failed == 0 and len(res.predictions) == 2
    cls_only = TwoStagePredictor(classifier=tiny_run/'classifier'/'best.pt')
    assert cls_only.single_crop == 'foreground' and len(cls_only.predict(files[0])[0].pills) == 1
    with pytest.raises(ValueError, match='combo mode needs a detector'): cls_only.predict(files[0], mode='combo')
    with pytest.raises(ValueError, match='no automatic mode'): cls_only.predict(files[0], mode='auto')


def test_a_run_whose_pinned_class_map_differs_is_refused(tiny_run, tmp_path):
    run = tmp_path/'run'
    shutil.copytree(tiny_run, run)
    (run/'class_map.sha256').write_text('0' * 64 + '  class_mapping.json\n')
    with pytest.raises(RunMismatch, match='refusing to predict'): TwoStagePredictor(run)


@pytest.mark.parametrize('conf', [2, -1, float('nan')])
def test_a_confidence_outside_0_1_is_refused_naming_it(tiny_run, predictor, conf):
    files, _ = split_files(tiny_run, 'test', 'combo')
    with pytest.raises(ValueError, match=rf'conf must be a number in \[0, 1\], not {conf!r}'):
        predict(files[:1], mode='combo', run=tiny_run, conf=conf)
    with pytest.raises(ValueError, match='conf must be'): predictor.predict(files[:1], mode='combo', conf=conf)
    with pytest.raises(ValueError, match='conf must be'): predictor.detector([Image.open(files[0])], conf=conf)
