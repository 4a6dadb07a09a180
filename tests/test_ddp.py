"""The one trainer under torchrun: 2 processes with gloo on CPU write one run folder and one set of checkpoints, keep
the single-process global batch, stop together in OOM safe mode, and the run resumes in a single process."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest
from pillsnap.classifier import load_checkpoint
from pillsnap.runlog import read_metrics
from pillsnap.stage import synth_manifest

TORCHRUN = Path(sys.executable).parent/'torchrun'
SCRIPT = '''
import sys
from pillsnap.scale import OOMSafeMode
from pillsnap.train import train
manifest, run, cache, resume, inject = sys.argv[1:6]
# img_size 64: at micro-batch 1 (after the OOM guard) test_efficientnet's last feature map must exceed 1x1 for BatchNorm
kw = dict(max_steps=2, batch_size=4, img_size=64, threads=1, log_every=1, progress=False)
try:
    train(manifest, target='classifier', epochs=2, out=run, cache_dir=cache, workers=0, echo=False, resume=resume == '1',
          classifier_kw=kw, inject_oom=[int(s) for s in inject.split(',')] if inject else None)
except OOMSafeMode as e: print('SAFE MODE at step', e.step)
'''


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    m = synth_manifest(tmp_path_factory.mktemp('ddp'), classes=4, per_class=5, combos=2, samples=60, stage=1)
    (m.parent/'train.py').write_text(SCRIPT)
    return m


def _launch(manifest, run, cache, nproc=None, resume=False, inject=''):
    "Run the training script in one process, or under torchrun with `nproc` processes on CPU (gloo)."
    script = manifest.parent/'train.py'
    args = [str(manifest), str(run), str(cache), '1' if resume else '0', inject]
    cmd = ([str(TORCHRUN), '--standalone', '--nproc_per_node', str(nproc), str(script)] if nproc else
           [sys.executable, str(script)]) + args
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f'{cmd} failed:\n{res.stdout}\n{res.stderr[-4000:]}'
    return res


def _lines(run):
    return [json.loads(line) for line in (Path(run)/'metrics.jsonl').read_text().splitlines()]


def test_two_gloo_processes_write_one_run_with_the_single_process_global_batch_and_resume_on_one(manifest, tmp_path):
    cache = tmp_path/'cache'
    # 2 processes x 2 images = the global batch of 4; 4 OOMs at step 3: retry, micro 2→1, global 4→2, safe mode
    res = _launch(manifest, tmp_path/'ddp', cache, nproc=2, inject='3,3,3,3')
    assert res.stdout.count('SAFE MODE at step 3') == 2  # both ranks stopped at the same step
    _launch(manifest, tmp_path/'single', cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cache', 'ddp', 'single']  # one run folder per run
    run = tmp_path/'ddp'
    assert sorted(p.name for p in (run/'classifier').iterdir()) == ['best.pt', 'classes.json', 'last.pt']
    recs = _lines(run)
    steps = [r for r in recs if r['kind'] == 'step']
    assert [r['step'] for r in steps] == [1, 2]  # written once, by rank 0
    assert [r['event'] for r in recs if r.get('event') in ('start', 'resume') and r.get('model')] == ['start']
    single = read_metrics(tmp_path/'single', 'step', 'classifier')
    assert [(r['global_batch'], r['world_size'], r['micro_batch']) for r in steps] == [(4, 2, 2)] * 2
    assert single.global_batch.tolist() == [4] * 4 and single.step.tolist() == [1, 2, 3, 4]
    assert all(math.isfinite(r['loss']) for r in steps)
    oom = [r for r in recs if r.get('event') == 'oom_state']
    assert [(r['to'], r['global_batch']) for r in oom] == [(1, 4), (3, 4), (4, 2), (5, 2)]
    ckpt = load_checkpoint(run/'classifier'/'last.pt')
    assert (ckpt['step'], ckpt['epoch'], ckpt['world_size']) == (2, 1, 2)

    _launch(manifest, run, cache, resume=True)  # the same run continues in one process
    after = read_metrics(run, 'step', 'classifier')
    # epoch 2: each loader batch of 4 is two optimiser steps of a global batch of 2 (the guard's halving is kept)
    assert after.step.tolist() == [1, 2, 4, 6]
    assert after[after.step > 2].world_size.eq(1).all() and after[after.step > 2].global_batch.eq(2).all()
    assert read_metrics(run, 'event').event.tolist()[-1] == 'done'
