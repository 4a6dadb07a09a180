"""One tiny two-stage run (classifier + detector, trained with `pillsnap.train.train` on a synthetic Stage 3 set with
plenty of combinations), built once per pytest session and shared by test_predict, test_evaluate and test_export."""
import os
from pathlib import Path
import pytest
from pillsnap.manifest import read_manifest
from pillsnap.stage import synth_manifest
from pillsnap.train import train
from pillsnap.yolo import manifest_data_root

SET = dict(classes=60, per_class=4, combos=240, scale=0.25)  # the set of bench/train_tiny_detector.py (mAP@0.5 0.99 at 15 epochs)
TRAIN = dict(epochs=2, detector_epochs=15, workers=0, echo=False,
             classifier_kw=dict(max_steps=10), detector_kw=dict(imgsz=128, batch=16))
_RUN = {}


def build_run(root: Path) -> Path:
    "Synthetic tree → scan → class map → Stage 3 max_combo manifest → tiny classifier + detector run; the run folder."
    synth_manifest(root, **SET, samples=2400)  # samples: every image of the set
    train(root/'manifest', out=root/'run', **TRAIN)
    return root/'run'


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory) -> Path:
    "The shared trained run folder (built on first use)."
    if 'run' not in _RUN:
        given = os.environ.get('PILLSNAP_EVAL_RUN')  # development: reuse a run folder built by build_run (it is written to)
        _RUN['run'] = Path(given) if given else build_run(tmp_path_factory.mktemp('evalrun'))
    return _RUN['run']


def split_files(run: Path, split: str, kind: str):
    "(absolute paths, manifest rows) of one kind of image in a split of the run's manifest."
    m = run.parent/'manifest'
    df = read_manifest(m, split)
    df = df[df.kind == kind].reset_index(drop=True)
    root = manifest_data_root(m)
    return [root/p for p in df.path], df
