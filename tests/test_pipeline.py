"""The data pipeline through the CLI, on a synthetic tree with every fault: scan -> manifest -> YOLO -> ultralytics."""
import json
import pandas as pd
import pytest
from conftest import run_cli
from pillsnap.manifest import read_manifest
from pillsnap.split import check_no_group_leak


@pytest.fixture(scope='module')
def stage_dir(tmp_path_factory, faulty_tree):
    "Scan the faulty tree and build a Stage 3 max_combo manifest and its YOLO data set with the CLI."
    work = tmp_path_factory.mktemp('work')
    run_cli('scan', '--data-root', faulty_tree.root, '--check', 'images', '--work-dir', work)
    run_cli('manifest', '--stage', 3, '--strategy', 'max_combo', '--samples', 40, '--classes', 6, '--work-dir', work)
    run_cli('convert-yolo', '--manifest', work/'stage3'/'max_combo', '--work-dir', work)
    return work/'stage3'/'max_combo'


def test_manifest_uses_every_train_combination_and_the_counts_its_report_claims(stage_dir, faulty_tree):
    report = json.loads((stage_dir/'sampling_report.json').read_text())
    train, val = read_manifest(stage_dir, 'train'), read_manifest(stage_dir, 'val')
    sampled = pd.concat([train, val])
    truth = faulty_tree.images
    assert (sampled.kind == 'combo').sum() == ((truth.kind == 'combo') & (truth.split == 'train')).sum()
    assert report['achieved']['train+val'] == {'single': int((sampled.kind == 'single').sum()),
                                               'combo': int((sampled.kind == 'combo').sum()), 'total': 40}
    assert check_no_group_leak(train, val)['shared_groups'] == 0
    assert json.loads((stage_dir/'run.json').read_text())['config']['strategy'] == 'max_combo'


def test_infeasible_mix_fails_with_the_numbers_and_writes_nothing(tmp_path, faulty_tree):
    run_cli('scan', '--data-root', faulty_tree.root, '--work-dir', tmp_path)
    res = run_cli('manifest', '--strategy', 'target', '--single-ratio', 0.1, '--samples', 40, '--classes', 6,
                  '--work-dir', tmp_path, check=False)
    assert res.returncode == 2 and 'needs' in res.stderr and 'Strategies that work' in res.stderr
    assert not (tmp_path/'stage1').exists()


def test_dry_run_prints_the_report_and_writes_nothing(tmp_path, faulty_tree):
    run_cli('scan', '--data-root', faulty_tree.root, '--work-dir', tmp_path)
    before = sorted(tmp_path.rglob('*'))
    res = run_cli('manifest', '--strategy', 'combo_light', '--samples', 40, '--classes', 6, '--dry-run',
                  '--work-dir', tmp_path)
    report = json.loads(res.stdout)
    assert report['strategy'] == 'combo_light' and report['achieved']['train+val']['total'] == 40
    assert sorted(tmp_path.rglob('*')) == before   # not even the class map


def test_manifest_paths_stay_relative_to_the_scanned_root_and_an_empty_conversion_fails(tmp_path, faulty_tree):
    elsewhere = tmp_path/'elsewhere'; elsewhere.mkdir()
    run_cli('scan', '--data-root', faulty_tree.root, '--work-dir', tmp_path)
    env = {'PATH': '/usr/bin:/bin', 'PILLSNAP_DATA_ROOT': str(elsewhere)}
    run_cli('manifest', '--strategy', 'single_only', '--samples', 20, '--classes', 4, '--work-dir', tmp_path, env=env)
    report = json.loads((tmp_path/'stage1'/'single_only'/'sampling_report.json').read_text())
    assert report['data_root'] == str(faulty_tree.root.resolve())
    res = run_cli('convert-yolo', '--manifest', tmp_path/'stage1'/'single_only', '--work-dir', tmp_path, check=False)
    assert res.returncode == 2 and 'have no combination images to convert' in res.stderr
    assert not (tmp_path/'stage1'/'single_only'/'yolo').exists()   # no data.yaml that would look like a data set


def test_yolo_labels_are_valid_and_ultralytics_trains_on_them(stage_dir, tmp_path):
    yolo = stage_dir/'yolo'
    report = json.loads((yolo/'conversion_report.json').read_text())
    assert report['validation']['n_mismatch'] == 0 and report['success_rate'] == 1.0
    labels = list((yolo/'labels'/'train').glob('*.txt'))
    assert labels and all((yolo/'images'/'train'/f'{p.stem}.png').is_symlink() for p in labels)
    from pillsnap.offline import configure_offline
    configure_offline()  # an entry point: ultralytics must start offline (importing pillsnap sets nothing)
    from ultralytics import YOLO
    model = YOLO('yolo11n.yaml')
    model.train(data=str(yolo/'data.yaml'), epochs=1, imgsz=64, batch=4, workers=0, device='cpu', amp=False,
                plots=False, project=str(tmp_path), name='det', verbose=False)
    assert (tmp_path/'det'/'weights'/'last.pt').exists()
