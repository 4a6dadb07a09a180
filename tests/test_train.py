"""`pillsnap.train.train` on a real synthetic Stage 3 manifest: every target and order, signals, resume, class-map check."""
import hashlib, json, os, shutil, signal, subprocess, sys, time
import pytest
from pillsnap.runlog import read_metrics
from pillsnap.classifier import ClassMapMismatch
from pillsnap.train import train

FAST = dict(classifier_kw=dict(max_steps=2), detector_kw=dict(imgsz=64, batch=8, workers=0), echo=False)


def epoch_models(run_dir) -> list:
    return read_metrics(run_dir, 'epoch').model.tolist()


@pytest.mark.parametrize('target,order,expected', [
    ('detector', 'sequential', ['detector'] * 2),
    ('classifier', 'sequential', ['classifier'] * 2),
    (None, 'sequential', ['classifier'] * 2 + ['detector'] * 2),  # stage 3: both by default
    ('both', 'interleaved', ['detector', 'classifier'] * 2),
])
def test_train_runs_each_target_and_order_into_one_run_folder(stage3_manifest, tmp_path, target, order, expected):
    res = train(stage3_manifest, target=target, order=order, epochs=2, out=tmp_path/'run', **FAST)
    assert not res.stopped and res.run_dir == tmp_path/'run'
    assert epoch_models(res.run_dir) == expected
    models = sorted(set(expected))
    assert sorted(res.checkpoints) == models and all(p['last'].exists() for p in res.checkpoints.values())
    assert (res.classifier is not None) == ('classifier' in models) and (res.detector is not None) == ('detector' in models)
    for f in ('run.json', 'config.yaml', 'class_mapping.json', 'class_map.sha256', 'metrics.jsonl', 'train.log'):
        assert (res.run_dir/f).exists(), f
    sha = hashlib.sha256((stage3_manifest/'class_mapping.json').read_bytes()).hexdigest()
    assert (res.run_dir/'class_map.sha256').read_text().split()[0] == sha
    rec = json.loads((res.run_dir/'run.json').read_text())
    assert rec['params']['target'] == (target or 'both') and rec['seed'] == 42 and rec['result']['stopped'] is False
    assert 'estimate' in read_metrics(res.run_dir, 'event').event.tolist()


def test_resume_with_another_class_map_is_refused(stage3_manifest, tmp_path):
    m = tmp_path/'manifest'
    shutil.copytree(stage3_manifest, m, symlinks=True)
    train(m, target='detector', epochs=1, out=tmp_path/'run', **FAST)
    cmap = json.loads((m/'class_mapping.json').read_text())
    cmap['classes'] = cmap['classes'][::-1]
    (m/'class_mapping.json').write_text(json.dumps(cmap))
    with pytest.raises(ClassMapMismatch, match="refusing to resume with another class map"):
        train(m, out=tmp_path/'run', resume=True, echo=False)
    with pytest.raises(FileExistsError, match='already holds a run'):
        train(stage3_manifest, target='detector', out=tmp_path/'run', **FAST)


SIGNALLED = '''
import sys
from pillsnap.train import train
r = train(sys.argv[1], target='both', order=sys.argv[3], epochs=2, out=sys.argv[2], classifier_kw=dict(max_steps=2),
          detector_kw=dict(imgsz=64, batch=8, workers=0), echo=False)
print('STOPPED' if r.stopped else 'DONE', r.classifier is not None and not r.classifier['done'])
'''


def sigterm_after_first_epoch(manifest, run, order: str) -> str:
    "Run `train` in a child process, SIGTERM it once an epoch record is written; its last output line."
    proc = subprocess.Popen([sys.executable, '-c', SIGNALLED, str(manifest), str(run), order],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run/'metrics.jsonl').exists() and '"kind": "epoch"' in (run/'metrics.jsonl').read_text(): break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0
    return out.strip().splitlines()[-1]


def test_sigterm_in_interleaved_order_stops_both_models_and_reports_the_classifier(stage3_manifest, tmp_path):
    assert sigterm_after_first_epoch(stage3_manifest, tmp_path/'run', 'interleaved') == 'STOPPED True'
    res = train(stage3_manifest, out=tmp_path/'run', resume=True, echo=False)
    assert not res.stopped and res.classifier['done'] and res.detector['epochs_done'] == 2
    assert epoch_models(tmp_path/'run').count('detector') == 2 and epoch_models(tmp_path/'run').count('classifier') == 2


def test_sigterm_stops_cleanly_and_resume_finishes_the_unfinished_models(stage3_manifest, tmp_path):
    run = tmp_path/'run'
    assert sigterm_after_first_epoch(stage3_manifest, run, 'sequential').startswith('STOPPED')
    assert 'detector' not in epoch_models(run)  # stopped during the classifier: the detector never started
    assert 'SIGTERM' in read_metrics(run, 'event').get('signal', []).tolist()
    res = train(stage3_manifest, out=run, resume=True, echo=False)
    assert not res.stopped
    assert epoch_models(run) == ['classifier'] * 2 + ['detector'] * 2


def test_a_run_that_fails_while_setting_up_leaves_nothing_behind(stage3_manifest, tmp_path):
    "Too few crops for one batch: the error says so, what the call created is removed, files it found are kept, and the same folder works after."
    run, kept = tmp_path/'run', tmp_path/'kept'
    with pytest.raises(ValueError, match='fewer than one batch'):
        train(stage3_manifest, target='classifier', out=run, batch_size=100_000, echo=False)
    assert not run.exists()
    kept.mkdir(); (kept/'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match='fewer than one batch'):
        train(stage3_manifest, target='classifier', out=kept, batch_size=100_000, echo=False)
    assert sorted(p.name for p in kept.iterdir()) == ['notes.txt']
    r = train(stage3_manifest, target='classifier', out=kept, epochs=1, echo=False, classifier_kw=dict(max_steps=1))
    assert 'classifier' in r.checkpoints and (kept/'notes.txt').read_text() == 'mine'
