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
    from pillsnap.stage import synth_manifest
    return synth_manifest(tmp_path_factory.mktemp('stage3'), classes=8, per_class=4, combos=16, scale=0.25, samples=60,
                          yolo=True)
