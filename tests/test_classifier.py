"""Classifier trainer on real synthetic trees: a few steps, exact resume after SIGKILL, atomic checkpoints,
class-map mismatch refused, corrupt images skipped."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from pillsnap.classifier import ClassMapMismatch, ClassifierTrainer, load_checkpoint, load_classifier, train_classifier
from pillsnap.manifest import read_manifest
from pillsnap.runlog import read_metrics
from pillsnap.stage import synth_manifest

FAST = dict(epochs=2, batch_size=4, img_size=48, max_steps=4, threads=1, progress=False)


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    "A real synthetic tree, scanned, with a max_combo manifest (singles and combinations)."
    return synth_manifest(tmp_path_factory.mktemp('cls'), classes=8, per_class=6, combos=4, samples=200, stage=1)


def _script(manifest, run, cache, **kw) -> str:
    args = {**FAST, 'cache_dir': str(cache), 'save_every': 1, 'log_every': 1, 'resume': True, **kw}
    return (f'from pillsnap.classifier import train_classifier\n'
            f'train_classifier({str(manifest)!r}, {str(run)!r}, **{args!r})\n')


def _run(script, env=None, **popen):
    return subprocess.Popen([sys.executable, '-c', script], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def _events(run, event):
    path = Path(run)/'metrics.jsonl'
    if not path.exists(): return []
    recs = []
    for line in path.read_text().splitlines():
        try: recs.append(json.loads(line))
        except json.JSONDecodeError: pass
    return [r for r in recs if r.get('event') == event]


def _wait_for(cond, proc, timeout=120):
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None: raise AssertionError(f'training ended before the kill: {proc.stderr.read()}')
        if time.monotonic() - t0 > timeout: proc.kill(); raise AssertionError('timed out waiting for the run')
        time.sleep(0.05)


def test_a_few_steps_write_checkpoints_classes_and_metrics(manifest, tmp_path):
    res = train_classifier(manifest, tmp_path/'run', cache_dir=tmp_path/'cache', **FAST)
    assert (res['done'], res['epochs'], res['step']) == (True, 2, 8)
    out = tmp_path/'run'/'classifier'
    classes = json.loads((out/'classes.json').read_text())
    codes = {c for s in ('train',) for cs in read_manifest(manifest, s).codes for c in cs.split('|')}
    assert [c['code'] for c in classes] == sorted(codes)  # the head covers the train split's codes, combo pills too
    ckpt = load_checkpoint(out/'last.pt')
    assert {'model', 'optimizer', 'scheduler', 'scaler', 'ema', 'rng', 'config', 'class_map_hash', 'classes'} <= set(ckpt)
    steps, epochs = read_metrics(tmp_path/'run', 'step', 'classifier'), read_metrics(tmp_path/'run', 'epoch', 'classifier')
    assert {'loss', 'lr', 'img_s', 'data_wait', 'rss_mb', 'img_size', 'global_batch', 'micro_batch', 'accum'} <= set(steps)
    assert epochs.epoch.tolist() == [1, 2] and epochs.top1.between(0, 1).all() and epochs.val_loss.notna().all()
    events = read_metrics(tmp_path/'run', 'event').event.tolist()
    assert events[0] == 'start' and 'estimate' in events and events[-1] == 'done'
    model, table, tcfg = load_classifier(tmp_path/'run')
    assert model(torch.zeros(1, 3, tcfg['img_size'], tcfg['img_size'])).shape == (1, len(table))


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(manifest, tmp_path):
    cache = tmp_path/'cache'
    ref = _run(_script(manifest, tmp_path/'ref', cache))
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    proc = _run(_script(manifest, tmp_path/'run', cache), env={'PILLSNAP_DIAG_STEP_PAUSE': '0.3'})
    _wait_for(lambda: any(e['epoch'] == 1 and e['batch_in_epoch'] == 2 for e in _events(tmp_path/'run', 'checkpoint')), proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert load_checkpoint(tmp_path/'run'/'classifier'/'last.pt')['epoch'] == 1  # killed inside the second epoch
    res = _run(_script(manifest, tmp_path/'run', cache))
    assert res.wait(timeout=300) == 0, res.stderr.read()
    a, b = (load_checkpoint(tmp_path/r/'classifier'/'last.pt') for r in ('ref', 'run'))
    assert a['step'] == b['step'] == 8
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    cols = ['epoch', 'step', 'train_loss', 'val_loss', 'top1', 'top5', 'macro_f1']
    ea, eb = (read_metrics(tmp_path/r, 'epoch')[cols] for r in ('ref', 'run'))
    assert ea.equals(eb)
    assert 'resume' in read_metrics(tmp_path/'run', 'event').event.tolist()


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_usable(manifest, tmp_path):
    proc = _run(_script(manifest, tmp_path/'run', tmp_path/'cache'), env={'PILLSNAP_DIAG_SAVE_PAUSE': '3'})
    out = tmp_path/'run'/'classifier'
    _wait_for(lambda: _events(tmp_path/'run', 'checkpoint') and list(out.glob('.last.pt.*.tmp')), proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert list(out.glob('.last.pt.*.tmp'))  # the kill hit the middle of the second save
    assert load_checkpoint(out/'last.pt')['step'] == 1  # the first save is intact
    res = train_classifier(manifest, tmp_path/'run', cache_dir=tmp_path/'cache', resume=True, **FAST)
    assert res['done'] and res['step'] == 8
    assert not list(out.glob('.*.tmp'))  # the resume cleared the half-written file


def test_sigterm_saves_last_pt_mid_epoch_and_exits_0(manifest, tmp_path):
    proc = _run(_script(manifest, tmp_path/'run', tmp_path/'cache', save_every=None), env={'PILLSNAP_DIAG_STEP_PAUSE': '0.3'})
    _wait_for(lambda: len(_events(tmp_path/'run', 'estimate')), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    ckpt = load_checkpoint(tmp_path/'run'/'classifier'/'last.pt')
    assert ckpt['epoch'] == 0 and 0 < ckpt['batch_in_epoch'] < 4 and ckpt['step'] == ckpt['batch_in_epoch']
    assert _events(tmp_path/'run', 'stop')


def test_resume_with_another_class_map_is_refused(manifest, tmp_path):
    other = tmp_path/'m2'
    shutil.copytree(manifest, other)
    train_classifier(other, tmp_path/'run', cache_dir=tmp_path/'cache', **{**FAST, 'epochs': 1})
    cm = json.loads((other/'class_mapping.json').read_text())
    cm['classes'][0]['dl_name'] = 'renamed'
    (other/'class_mapping.json').write_text(json.dumps(cm))
    with pytest.raises(ClassMapMismatch, match='class_mapping.json') as e:
        ClassifierTrainer(other, tmp_path/'run', cache_dir=tmp_path/'cache', resume=True, **FAST)
    assert 'sha256' in str(e.value) and 'refusing' in str(e.value)


def test_a_corrupt_image_is_skipped_and_reported_and_training_goes_on(manifest, tmp_path):
    report = json.loads((manifest/'sampling_report.json').read_text())
    data, m = tmp_path/'data', tmp_path/'m'
    shutil.copytree(report['data_root'], data); shutil.copytree(manifest, m)
    report['data_root'] = str(data)
    (m/'sampling_report.json').write_text(json.dumps(report))
    bad = read_manifest(m, 'train').query("kind == 'single'").path.iloc[0]
    (data/bad).write_bytes((data/bad).read_bytes()[:300])  # truncated PNG
    res = train_classifier(m, tmp_path/'run', cache_dir=tmp_path/'cache', **FAST)
    assert res['done'] and res['step'] == 8 and res['skipped'] == 1
    skipped = read_metrics(tmp_path/'run', 'event').query("event == 'skipped'")
    assert skipped['count'].sum() == 1 and skipped.paths.iloc[0] == [bad]
