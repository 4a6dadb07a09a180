"""Training at scale on real synthetic trees: progressive resize and the OOM guard inside real short runs, OOM safe
mode through the CLI (exit code, checkpoint, --resume), and the sharded cache through the CLI."""
import math
import pytest
from conftest import run_cli
from pillsnap.advise import advise
from pillsnap.cache import build_cache
from pillsnap.classifier import load_checkpoint, train_classifier
from pillsnap.config import load_config
from pillsnap.runlog import read_metrics
from pillsnap.stage import synth_manifest
from pillsnap.scale import SAFE_MODE_EXIT, plot_resize, resize_schedule


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    "A real synthetic tree, scanned, with a small max_combo manifest (singles and combinations)."
    return synth_manifest(tmp_path_factory.mktemp('scale'), classes=6, per_class=5, combos=4, samples=120, stage=1)


def _events(run, event):
    ev = read_metrics(run, 'event')
    return ev[ev.event == event].reset_index(drop=True)


def test_resize_sizes_are_used_and_oom_states_1_and_3_keep_the_global_batch(manifest, tmp_path):
    res = train_classifier(manifest, tmp_path/'run', cache_dir=tmp_path/'cache', epochs=2, batch_size=8, max_steps=2,
                           img_size=32, resize='32:64:linear', inject_oom=[2, 2], threads=1, log_every=1,
                           progress=False)
    assert res['done'] and res['step'] == 4
    steps = read_metrics(tmp_path/'run', 'step', 'classifier')
    plan = resize_schedule('32:64:linear', 2, 8).sizes(2)
    assert plan == [32, 64]
    assert steps.img_size.tolist() == [plan[int(e)] for e in steps.epoch] == [32, 32, 64, 64]
    assert (steps.global_batch == 8).all() and steps.loss.map(math.isfinite).all()
    assert (steps.micro_batch * steps.accum >= 8).all() and ((steps.micro_batch - 1) * steps.accum < 8).all()
    oom = _events(tmp_path/'run', 'oom_state')
    # on a CPU there is no AMP state (2): retry, then halve the micro-batch
    assert oom[['from', 'to', 'action', 'step']].values.tolist() == [[0, 1, 'retry', 2], [1, 3, 'halve_micro_batch', 2]]
    assert (oom.global_batch == 8).all() and oom.micro_batch.tolist() == [8, 4] and oom.accumulation.tolist() == [1, 2]
    assert steps.micro_batch.tolist()[1] == 4  # state 3: half the micro-batch, twice the accumulation
    ckpt = load_checkpoint(tmp_path/'run'/'classifier'/'last.pt')
    assert ckpt['transform']['img_size'] == 64 and ckpt['oom_guard']['micro_div'] == 2
    fig = plot_resize(tmp_path/'run')
    assert len(fig.axes[0].lines) == 2
    first = advise(tmp_path/'run')[0]  # the advisor reads the OOM events of this real run and ranks them first
    assert first.topic == 'oom' and 'micro-batch 4 × accumulation 2 (global batch 8 kept)' in first.title, first


def test_oom_safe_mode_exits_with_a_checkpoint_that_resume_continues(manifest, tmp_path):
    run, args = tmp_path/'run', ['--manifest', manifest, '--epochs', '1', '--cache-dir', tmp_path/'cache',
                                 '--work-dir', tmp_path/'work']
    # 16 in micro-batches of 16: retry, micro 16→8→4→2→1, global 16→8→4→2→1, then safe mode: 10 OOMs at step 1
    res = run_cli('train', *args, '--out', run, '--inject-oom', ','.join(['1'] * 10), check=False)
    assert res.returncode == SAFE_MODE_EXIT, res.stderr
    assert 'safe mode' in res.stderr and f'--resume --out {run}' in res.stderr
    oom = _events(run, 'oom_state')
    assert oom.to.tolist() == [1, 3, 3, 3, 3, 4, 4, 4, 4, 5]
    assert oom.global_batch.tolist() == [16] * 5 + [8, 4, 2, 1, 1] and oom.lr_scale.iloc[-1] == 1 / 16
    assert advise(run)[0].topic == 'oom'  # safe mode: the advice that comes first is the recipe that fits
    ckpt = load_checkpoint(run/'classifier'/'last.pt')
    assert (ckpt['step'], ckpt['batch_in_epoch'], ckpt['oom_guard']['global_div']) == (0, 0, 16)  # before the failed step
    safe = load_config(config_file=run/'oom_safe_config.yaml', env={})  # the config schema `pillsnap train --config` reads
    c = ckpt['config']
    assert (safe.profile, safe.seed, safe.train.batch_size, safe.train.epochs) == (c['profile'], c['seed'], 1, 1)
    assert safe.train.lr == pytest.approx(c['lr'] / 16, rel=0.01) and safe.train.img_size < c['img_size']
    nxt = f"pillsnap train --config {run/'oom_safe_config.yaml'} --manifest {manifest}"
    assert nxt in res.stderr and nxt in (run/'oom_safe_config.yaml').read_text()  # the exact command of the smaller run
    res = run_cli('train', '--resume', '--out', run, '--cache-dir', tmp_path/'cache', '--work-dir', tmp_path/'work')
    assert 'run folder' in res.stdout
    steps = read_metrics(run, 'step', 'classifier')
    # the guard's escalation survives the resume: the loader's batch of 16 is now 16 optimiser steps of 1
    assert steps.step.tolist() == [16] and steps.global_batch.tolist() == [1] and steps.loss.map(math.isfinite).all()
    assert len(_events(run, 'oom_state')) == 10  # the diagnostic injection is not re-applied on resume
    assert read_metrics(run, 'event').event.iloc[-1] == 'done'


def test_cache_shards_from_the_cli_together_equal_the_unsharded_cache(manifest, tmp_path):
    for i in range(2):
        run_cli('cache', '--manifest', manifest, '--size', '64', '--workers', '1', '--cache-dir', tmp_path/'sharded',
                '--shard', f'{i}/2', '--work-dir', tmp_path/'work')
    whole = build_cache(manifest, tmp_path/'whole', size=64, workers=1, progress=False)
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in (d/'s64').rglob('*.jpg')}
    assert files(tmp_path/'sharded') == files(tmp_path/'whole') and len(files(tmp_path/'whole')) == whole.index.ok.sum()
    assert len(list((tmp_path/'sharded'/'index').glob('*.shard-*-of-2.parquet'))) == 2
