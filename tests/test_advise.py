"""`pillsnap advise` and `pillsnap estimate` on real short classifier runs made to show a symptom."""
import json, warnings
import numpy as np
import pytest
import yaml
from conftest import run_cli
from pillsnap.advise import advise, estimate, forward_flops
from pillsnap.classifier import resolve_config
from pillsnap.config import load_config
from pillsnap.runlog import read_metrics
from pillsnap.synth import synth
from pillsnap.train import train
from pillsnap.work import WorkLayout

HW = dict(cores=2, ram_gb=24.0, gpu=None, gpu_mem_mb=None)  # the machine the advice is for (this CI box's shape)
RUN = dict(target='classifier', echo=False)


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    "A Stage 1 single_only manifest in the work-folder layout, with its crop cache."
    from pillsnap.classmap import ensure_class_map
    from pillsnap.manifest import build_manifest
    from pillsnap.scan import scan
    d = tmp_path_factory.mktemp('advise')
    synth(d/'data', classes=4, per_class=24, combos=0, progress=False)
    scan(d/'data', d/'work'/'inventory', progress=False, workers=1)
    cm = ensure_class_map(d/'work'/'inventory'/'inventory.parquet', d/'work'/'inventory'/'class_mapping.json')
    out = WorkLayout(d/'work').manifest(1, 'single_only')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        build_manifest(d/'work'/'inventory'/'inventory.parquet', cm, stage=1, strategy='single_only', samples=120,
                       classes=4, allow_shortfall=True, out_dir=out, data_root=d/'data')
    return out


def _run(manifest, out, epochs, workers=0, **kw):
    "A real tiny classifier run (one step record per step, one CPU thread)."
    train(manifest, epochs=epochs, out=out, cache_dir=manifest.parent.parent/'cache', workers=workers, **RUN,
          classifier_kw=dict(model='test_efficientnet', batch_size=8, log_every=1, threads=1, **kw))
    return out


@pytest.fixture(scope='module')
def diverging(manifest, tmp_path_factory):
    "A learning rate 30,000× the recipe's: the loss explodes."
    return _run(manifest, tmp_path_factory.mktemp('runs')/'diverging', 2, lr=100.0, img_size=32, max_steps=3)


def test_a_diverging_run_gets_the_lr_advice_first(diverging):
    steps = read_metrics(diverging, 'step')
    assert steps.loss.iloc[-1] > 10 * steps.loss.iloc[0] or not np.isfinite(steps.loss).all()  # the symptom is real
    adv = advise(diverging, hw=HW)
    a = adv[0]
    assert (a.rank, a.topic, a.model) == (1, 'lr', 'classifier')
    assert a.evidence['lr'] == 100.0 and a.changes == {'classifier_kw': {'lr': 10.0}}
    assert a.evidence['first_loss'] == round(float(steps.loss.iloc[0]), 4)


def test_a_starved_loader_gets_the_loader_advice_first(manifest, tmp_path):
    # a tiny model on 16 px images in the training process (workers=0): decoding the cached crops costs more than the step
    run = _run(manifest, tmp_path/'starved', 2, img_size=16, max_steps=4)
    steps = read_metrics(run, 'step')
    w = 1 / steps.img_s
    share = float((steps.data_wait * w).sum() / w.sum())
    assert share >= 0.4, f'the run was not starved enough to test the rule ({share:.2f})'
    a = advise(run, hw=HW)[0]
    assert (a.topic, a.changes) == ('workers', {'workers': 1})
    assert a.evidence['data_wait'] == round(share, 3) and a.evidence['workers'] == 0 and a.evidence['cores'] == 2


def test_a_run_still_learning_gets_the_epochs_advice_first(manifest, tmp_path):
    # three epochs of the tiny recipe, the loader in a worker process: not starved, still learning
    run = _run(manifest, tmp_path/'underfit', 3, workers=1, img_size=96, lr=3e-3)
    ep = read_metrics(run, 'epoch')
    assert ep.val_loss.iloc[-1] < ep.val_loss.iloc[-2] or ep.top1.iloc[-1] > ep.top1.iloc[-2]  # still improving
    adv = advise(run, hw=HW)
    assert (adv[0].topic, adv[0].changes) == ('epochs', {'epochs': 5})
    assert adv[0].evidence['val_loss'] == [round(float(v), 4) for v in ep.val_loss.tail(3)]
    assert 'lr' not in [a.topic for a in adv]  # a healthy loss curve is not called diverging


def test_advise_cli_prints_the_ranking_and_writes_an_option_the_next_run_reads(diverging, manifest, tmp_path):
    res = run_cli('advise', diverging, '--write', 1, '--out', tmp_path/'next.yaml')
    assert res.stdout.startswith('1. [classifier] lower the learning rate to 10.0')
    assert f'option written to {tmp_path/"next.yaml"}' in res.stdout
    text = (tmp_path/'next.yaml').read_text()
    cfg = load_config(config_file=tmp_path/'next.yaml', env={})  # what `pillsnap train --config` reads
    assert WorkLayout.of(cfg).manifest(cfg.stage, cfg.strategy) == manifest and cfg.seed == 42  # same manifest and seed
    assert set(yaml.safe_load(text)) == {'work_dir', 'stage', 'strategy', 'seed', 'profile', 'train'}
    # the advised run's settings, with the advised LR in place of its 100.0
    assert cfg.train.kwargs() == dict(epochs=2, lr=10.0, batch_size=8, img_size=32, workers=0) and cfg.profile == 'tiny'
    assert "'max_steps': 3" in text  # the run's options that no config key carries are said, not dropped silently
    bad = run_cli('advise', diverging, '--write', 99, check=False)
    assert bad.returncode == 2 and 'option 99 does not exist' in bad.stderr
    # the next run reads the file (a flag still overrides it) and records the advised LR as the one it ran with
    run_cli('train', '--config', tmp_path/'next.yaml', '--epochs', 1, '--out', tmp_path/'next-run')
    rec = json.loads((tmp_path/'next-run'/'run.json').read_text())
    ran = rec['resolved']['classifier']
    assert rec['params']['lr'] == ran['lr'] == 10.0 and (ran['epochs'], ran['img_size'], ran['batch_size']) == (1, 32, 8)
    ev = read_metrics(tmp_path/'next-run', 'event')
    assert ev[ev.event == 'start'].dropna(subset=['model']).config.iloc[-1]['lr'] == 10.0  # the trainer's own record


def test_estimate_scales_a_measured_run_by_flops_and_prints_the_four_stages(diverging):
    steps = read_metrics(diverging, 'step')
    r = resolve_config('tiny')
    e = estimate(2, 'tiny', run_dir=diverging)  # the run trained at 32 px, the tiny recipe at its own size
    ratio = forward_flops(r.model, 32) / forward_flops(r.model, r.img_size)
    assert e.img_s == pytest.approx(steps.img_s.median() * ratio) and 'scaled' in e.basis
    assert e.table.stage.tolist()[:4] == ['1', '2', '3', '4'] and e.table.stage.iloc[-1].startswith('original')
    res = run_cli('estimate', '--stage', 3, '--profile', 'l', '--img-s', 133)
    assert 'stage 3, profile large: about 4.' in res.stdout
    assert 'original (RTX 5080)' in res.stdout and '132.85' in res.stdout
