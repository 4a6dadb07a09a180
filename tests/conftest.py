"""Shared fixtures: real synthetic AIHub trees and a way to run the installed `pillsnap` command."""
import os, subprocess, sys
from pathlib import Path
import pytest
from pillsnap.synth import synth

PILLSNAP = Path(sys.executable).parent/'pillsnap'


def run_cli(*args, cwd=None, env=None, check=True) -> subprocess.CompletedProcess:
    "Run the installed `pillsnap` console script; without `env`, PILLSNAP_* variables are removed."
    env = env if env is not None else {k: v for k, v in os.environ.items() if not k.startswith('PILLSNAP_')}
    res = subprocess.run([str(PILLSNAP), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f'pillsnap {" ".join(map(str, args))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}')
    return res


@pytest.fixture(scope='session')
def faulty_tree(tmp_path_factory):
    "A small synthetic AIHub tree with every kind of injected fault."
    return synth(tmp_path_factory.mktemp('data')/'aihub', classes=8, per_class=6, combos=6, faults=True, progress=False)


@pytest.fixture(scope='session')
def stage3_manifest(tmp_path_factory):
    "A small Stage 3 max_combo manifest (singles and combinations) with its YOLO data set in `yolo/`."
    import warnings
    from pillsnap.classmap import ensure_class_map
    from pillsnap.manifest import build_manifest
    from pillsnap.scan import scan
    from pillsnap.yolo import coco_to_yolo
    d = tmp_path_factory.mktemp('stage3')
    synth(d/'data', classes=8, per_class=4, combos=16, progress=False)
    scan(d/'data', d/'inventory', progress=False, workers=1)
    cm = ensure_class_map(d/'inventory'/'inventory.parquet', d/'class_mapping.json')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        build_manifest(d/'inventory'/'inventory.parquet', cm, stage=3, strategy='max_combo', samples=60, classes=8,
                       allow_shortfall=True, out_dir=d/'stage3'/'max_combo', data_root=d/'data')
        coco_to_yolo(d/'stage3'/'max_combo', d/'stage3'/'max_combo'/'yolo')
    return d/'stage3'/'max_combo'
