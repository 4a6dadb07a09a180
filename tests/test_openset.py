"""Open-set rejection on a real tiny run trained without 3 held-out classes: held-out images score lower than known
ones, `predict` answers "unknown" for a held-out image below the run's threshold, and the CLI writes the same rule."""
import json, warnings
from pathlib import Path
import numpy as np
import pytest
from conftest import run_cli
from pillsnap.classmap import ensure_class_map
from pillsnap.manifest import build_manifest
from pillsnap.openset import HELDOUT_FILE, OPENSET_FILE, calibrate, evaluate_openset, holdout_manifest, split_images
from pillsnap.predict import TwoStagePredictor, predict
from pillsnap.scan import scan
from pillsnap.synth import synth
from pillsnap.train import train

_RUN = {}


def build_openset_run(root: Path) -> Path:
    "Synthetic tree → Stage 1 manifest → 3 classes held out → tiny classifier → calibrated on val (target FAR 10 %)."
    synth(root/'data', classes=12, per_class=6, combos=0, progress=False)
    scan(root/'data', root/'inv', progress=False, workers=1)
    cm = ensure_class_map(root/'inv'/'inventory.parquet', root/'class_mapping.json')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        build_manifest(root/'inv'/'inventory.parquet', cm, stage=1, strategy='single_only', samples=600, classes=12,
                       allow_shortfall=True, out_dir=root/'manifest', data_root=root/'data')
    h = holdout_manifest(root/'manifest', root/'manifest_holdout', classes=3)
    train(h.manifest, out=root/'run', target='classifier', epochs=10, workers=0, echo=False, classifier_kw=dict(batch_size=8))
    calibrate(root/'run', target_far=0.1)
    return root/'run'


@pytest.fixture(scope='session')
def openset_run(tmp_path_factory) -> Path:
    "The shared held-out run folder (built on first use; also used by test_lookalike)."
    if 'run' not in _RUN: _RUN['run'] = build_openset_run(tmp_path_factory.mktemp('openset'))
    return _RUN['run']


@pytest.fixture(scope='module')
def evaluation(openset_run):
    return evaluate_openset(openset_run, split='test')


def test_heldout_classes_score_lower_than_known_ones(openset_run, evaluation):
    rule = json.loads((openset_run/OPENSET_FILE).read_text())
    assert rule['negatives'] == 'held-out classes' and rule['score'] in ('msp', 'energy') and rule['temperature'] > 0
    assert set(rule['by_score']) == {'msp', 'energy'} and rule['auroc'] == max(v['auroc'] for v in rule['by_score'].values())
    e = evaluation
    assert e['known_images'] > 0 and e['heldout_images'] > 0
    assert e['mean_score_heldout'] < e['mean_score_known']
    assert e['auroc'] > 0.5
    assert len(e['curve_known']['coverage']) > 2 and e['curve_open']['coverage'][-1] == 1.0
    for f in ('openset_eval.json', 'openset_scores.png', 'openset_coverage.png'): assert (openset_run/f).stat().st_size > 0


def test_predict_answers_unknown_for_a_heldout_image_below_the_threshold(openset_run, evaluation):
    known, held = split_images(openset_run, 'test')
    below = [p for p, s in zip(held.path, evaluation['scores']['heldout']) if s < evaluation['threshold']]
    assert below, 'no held-out test image scored below the threshold'
    codes = {c['code'] for c in json.loads((openset_run/'classifier'/'classes.json').read_text())}
    p = predict([below[0]], mode='single', run=openset_run).predictions[0].pills[0]
    assert p.code == 'unknown' and p.name == 'unknown' and p.openset_score < evaluation['threshold']
    assert len(p.top_k) == 5 and {t['code'] for t in p.top_k} <= codes  # the guesses are still listed
    above = [p for p, s in zip(known.path, evaluation['scores']['known']) if s >= evaluation['threshold']]
    q = TwoStagePredictor(openset_run).predict(above[0])[0].pills[0]
    assert q.code in codes and q.openset_score >= evaluation['threshold']
    plain = TwoStagePredictor(classifier=openset_run/'classifier'/'best.pt').predict(below[0])[0].pills[0]  # no rule
    assert plain.code == p.top_k[0]['code'] and plain.openset_score is None


def test_cli_calibrates_the_same_rule_and_predict_prints_unknown(openset_run, evaluation, tmp_path):
    before = json.loads((openset_run/OPENSET_FILE).read_text())
    out = run_cli('openset', '--run', openset_run, '--target-far', '0.1').stdout
    after = json.loads((openset_run/OPENSET_FILE).read_text())
    assert after['created_at'] >= before['created_at'] and 'AUROC' in out
    assert {k: after[k] for k in ('score', 'temperature', 'threshold')} == {k: before[k] for k in ('score', 'temperature', 'threshold')}
    _, held = split_images(openset_run, 'test')
    below = [p for p, s in zip(held.path, evaluation['scores']['heldout']) if s < evaluation['threshold']]
    line = run_cli('predict', below[0], '--mode', 'single', '--run', openset_run).stdout
    assert line.startswith(f'{below[0]}: unknown (') and 'guesses' in line
