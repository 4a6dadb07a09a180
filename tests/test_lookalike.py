"""The look-alike report on the held-out tiny run of test_openset: confused pairs with their labels side by side,
figures and markdown written, and a Grad-CAM map with the crop's shape that is not constant. Crops are the labelled
pill boxes (the run has no detector); the test split is used because the tiny classifier still confuses a quarter of it."""
import json
import numpy as np
from PIL import Image
from test_openset import openset_run  # noqa: F401 (fixture)
from pillsnap.lookalike import gradcam, lookalike_report
from pillsnap.openset import _label_crops, split_images
from pillsnap.predict import TwoStagePredictor


def test_gradcam_map_has_the_crop_shape_and_is_not_constant(openset_run):
    pr = TwoStagePredictor(openset_run)
    known, _ = split_images(openset_run, 'val')
    x = _label_crops(pr, [(known.path[0], Image.open(known.path[0]).convert('RGB'))], [known.box[0]])
    cam = gradcam(pr.classifier.model, x, [int(pr.classifier.logits(x).argmax())])
    assert cam.shape == (1, *x.shape[2:]) and cam.std() > 1e-3 and 0 <= cam.min() and cam.max() <= 1


def test_report_lists_confused_pairs_with_labels_side_by_side(openset_run, tmp_path):
    rep = lookalike_report(openset_run, split='test', pairs=3, out=tmp_path/'la', crop='label',
                           inventory=openset_run.parent/'inv'/'inventory.parquet')
    assert 0 < len(rep['pairs']) <= 3 and rep['crop'] == 'label'
    assert rep['pairs'] == sorted(rep['pairs'], key=lambda p: -p['count'])  # most confused first
    for p in rep['pairs']:
        assert p['true'] != p['predicted'] and p['count'] > 0
        assert p['true_labels']['print_front'] and p['predicted_labels']['drug_shape']  # from the scanned labels
        assert 0 <= p['true_centre_share'] <= 1 and (tmp_path/'la'/p['figure']).stat().st_size > 0
    md = (tmp_path/'la'/'lookalike.md').read_text()
    assert md.startswith('# Look-alike pairs') and all(f"{p['true']} → {p['predicted']}" in md for p in rep['pairs'])
    assert json.loads((tmp_path/'la'/'lookalike.json').read_text())['pairs'][0]['true'] == rep['pairs'][0]['true']
