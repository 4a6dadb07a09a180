"""The model commands end to end through the installed `pillsnap` command: synth → scan → manifest → train →
predict → evaluate → export, and the refusals a researcher meets first (bad epochs, a detector without combinations,
a resume on another manifest)."""
import json
import pytest
from conftest import run_cli


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "A work folder with a scanned synthetic tree and two manifests: stage 3 max_combo and stage 1 single_only."
    d = tmp_path_factory.mktemp('cli_models')
    run_cli('synth', d/'data', '--classes', 6, '--per-class', 6, '--combos', 16)
    run_cli('scan', '--data-root', d/'data', '--work-dir', d/'work')
    run_cli('manifest', '--work-dir', d/'work', '--stage', 3, '--strategy', 'max_combo', '--samples', 60, '--classes', 6,
            '--allow-shortfall')
    run_cli('manifest', '--work-dir', d/'work', '--stage', 1, '--strategy', 'single_only', '--samples', 30, '--classes', 6)
    return d/'work'


@pytest.fixture(scope='module')
def cli_run(work):
    "The run `pillsnap train` makes on the stage 3 max_combo manifest: both models, one epoch (shared by the tests here)."
    run = work/'runs'/'r'
    run_cli('train', '--work-dir', work, '--stage', 3, '--strategy', 'max_combo', '--epochs', 1, '--out', run)
    return run


def test_train_predict_evaluate_export_through_the_command(work, cli_run):
    run = cli_run
    assert (run/'classifier'/'best.pt').exists() and (run/'detector'/'weights'/'best.pt').exists()
    assert json.loads((run/'run.json').read_text())['params']['cache_dir'] == str((work/'cache').resolve())
    combo = next((work.parent/'data'/'val'/'images'/'combination').rglob('*.png'))
    out = run_cli('predict', combo, work/'missing.png', '--mode', 'combo', '--run', run, '--json', check=False)
    assert out.returncode == 1 and 'missing.png' in out.stderr  # one unreadable file: reported, the other predicted
    pred = json.loads(out.stdout.splitlines()[0])
    assert pred['mode'] == 'combo' and all(0 <= p['box_xyxy'][0] <= p['box_xyxy'][2] <= pred['width'] for p in pred['pills'])
    gates = run_cli('evaluate', '--run', run, '--split', 'test', '--max-images', 4).stdout
    assert '| top1 |' in gates and json.loads((run/'metrics.json').read_text())['test']['classification']['top1'] >= 0
    run_cli('export', '--run', run, '--samples', 4)  # ultralytics' exporter also prints to stdout: read the report
    assert json.loads((run/'export_report.json').read_text())['parity']['passed'] and (run/'export'/'classifier.onnx').exists()


def test_train_refuses_epochs_below_one(work, tmp_path):
    res = run_cli('train', '--work-dir', work, '--stage', 1, '--strategy', 'single_only', '--epochs', 0,
                  '--out', tmp_path/'r0', check=False)
    assert res.returncode == 2 and 'epochs must be at least 1' in res.stderr and not (tmp_path/'r0').exists()


def test_a_detector_without_combinations_is_refused_before_a_run_folder_is_made(work, tmp_path):
    res = run_cli('train', '--work-dir', work, '--stage', 1, '--strategy', 'single_only', '--target', 'detector',
                  '--out', tmp_path/'det', check=False)
    assert res.returncode == 2 and 'no combination images' in res.stderr and not (tmp_path/'det').exists()


def test_resume_keeps_the_run_on_its_own_manifest(work, cli_run):
    run = cli_run  # trained on stage 3 max_combo
    res = run_cli('train', '--work-dir', work, '--stage', 1, '--strategy', 'single_only', '--resume', '--out', run, check=False)
    assert res.returncode == 2 and 'max_combo' in res.stderr and 'single_only' in res.stderr
    res = run_cli('train', '--work-dir', work, '--resume', '--epochs', 3, '--out', run, check=False)
    assert res.returncode == 2 and 'cannot change on resume' in res.stderr
    assert 'run folder' in run_cli('train', '--work-dir', work, '--resume', '--out', run).stdout  # the recorded manifest
