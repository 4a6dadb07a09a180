"""Hostile input against manifest and convert-yolo (issue 7 §2, faults 5-10), on a real synthetic AIHub tree via the CLI."""
import json
from pathlib import Path
import pandas as pd
import pytest
from conftest import run_cli
from pillsnap.manifest import read_manifest


@pytest.fixture(scope='module')
def work(tmp_path_factory, faulty_tree):
    "A work folder holding the scan of the faulty tree and a Stage 1 max_combo manifest with its YOLO set."
    work = tmp_path_factory.mktemp('work')
    run_cli('scan', '--data-root', faulty_tree.root, '--work-dir', work)
    run_cli('manifest', '--strategy', 'max_combo', '--samples', 40, '--classes', 6, '--work-dir', work)
    run_cli('convert-yolo', '--strategy', 'max_combo', '--work-dir', work)
    return work


def snapshot(folder: Path) -> dict:
    "Every file below `folder` with its bytes (symlinks by target)."
    return {str(p.relative_to(folder)): (str(p.readlink()) if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob('*')) if p.is_file() or p.is_symlink()}


def test_convert_yolo_refuses_a_foreign_folder_and_deletes_nothing_in_it(work, tmp_path):
    theirs = tmp_path/'theirs'
    (theirs/'labels'/'train').mkdir(parents=True)
    (theirs/'labels'/'train'/'their_label.txt').write_text('0 0.5 0.5 0.2 0.2\n')
    (theirs/'notes.md').write_text('mine')
    before = snapshot(theirs)
    res = run_cli('convert-yolo', '--strategy', 'max_combo', '--work-dir', work, '--out', theirs, check=False)
    assert res.returncode == 2 and 'was not written by coco_to_yolo' in res.stderr
    assert snapshot(theirs) == before


def test_two_commands_never_share_an_output_folder(work):
    manifest = work/'stage1'/'max_combo'
    before = snapshot(manifest)
    res = run_cli('convert-yolo', '--manifest', manifest, '--out', manifest, '--work-dir', work, check=False)
    assert res.returncode == 2 and str(manifest) in res.stderr
    res = run_cli('manifest', '--strategy', 'balanced', '--samples', 20, '--classes', 4, '--work-dir', work,
                  '--out', work/'inventory', check=False)
    assert res.returncode == 2 and 'holds the output of `scan`' in res.stderr
    assert json.loads((work/'inventory'/'run.json').read_text())['command'] == 'scan'
    assert snapshot(manifest) == before


def test_fewer_samples_than_classes_drops_the_untrained_classes_and_says_so(work, tmp_path):
    res = run_cli('manifest', '--strategy', 'single_only', '--samples', 3, '--classes', 6, '--work-dir', work,
                  '--out', tmp_path/'m')
    report = json.loads(res.stdout)
    assert report['classes']['used'] == 3
    assert any('3 of 6 chosen classes got no training image' in w for w in report['warnings'])
    train, test = read_manifest(tmp_path/'m', 'train'), read_manifest(tmp_path/'m', 'test')
    assert set(train.class_id) == set(report['classes']['ids'])
    assert set(test.class_id.dropna()) <= set(report['classes']['ids'])


def test_target_with_no_singles_uses_no_single_class(work, tmp_path):
    res = run_cli('manifest', '--strategy', 'target', '--single-ratio', 0, '--samples', 6, '--classes', 4,
                  '--work-dir', work, '--out', tmp_path/'m')
    report = json.loads(res.stdout)
    assert report['classes']['used'] == 0 and 'no training image' in ' '.join(report['warnings'])
    assert set(read_manifest(tmp_path/'m', 'test').kind) <= {'combo'}


def test_manifest_accepts_the_inventory_folder_or_its_parquet_file(work, tmp_path):
    args = ('manifest', '--strategy', 'balanced', '--samples', 20, '--classes', 4, '--work-dir', work)
    run_cli(*args, '--inventory', work/'inventory', '--out', tmp_path/'a')
    run_cli(*args, '--inventory', work/'inventory'/'inventory.parquet', '--out', tmp_path/'b')
    for split in ('train', 'val', 'test'):
        pd.testing.assert_frame_equal(read_manifest(tmp_path/'a', split), read_manifest(tmp_path/'b', split))


def test_a_parquet_from_another_project_is_named_with_its_missing_columns(work, tmp_path):
    other = tmp_path/'other.parquet'
    pd.DataFrame({'filename': ['a.png'], 'label': [3]}).to_parquet(other)
    res = run_cli('manifest', '--inventory', other, '--work-dir', work, '--out', tmp_path/'m', check=False)
    assert res.returncode == 2 and str(other) in res.stderr and "missing columns ['path', 'split'" in res.stderr


def test_a_pill_box_far_outside_its_image_keeps_the_image_out_of_the_yolo_set(work, faulty_tree, tmp_path):
    outside = faulty_tree.faults[faulty_tree.faults.fault == 'box_outside_image']
    stems = {Path(p).stem for p in outside.path}
    assert stems
    run_cli('manifest', '--strategy', 'single_only', '--samples', 1000, '--work-dir', work, '--out', tmp_path/'m',
            '--allow-shortfall')
    run_cli('convert-yolo', '--manifest', tmp_path/'m', '--include-singles', '--work-dir', work)
    yolo = tmp_path/'m'/'yolo'
    assert not stems & {p.stem for p in yolo.glob('images/*/*')}
    report = json.loads((yolo/'conversion_report.json').read_text())
    in_manifest = stems & {Path(p).stem for s in ('train', 'val') for p in read_manifest(tmp_path/'m', s).path}
    skipped = {Path(i['path']).stem: i['reason'] for i in report['skipped_images']}
    assert all(skipped.get(s) == 'all_boxes_dropped' for s in in_manifest)  # (the scanner may quarantine it first)


def test_a_train_only_inventory_warns_that_the_test_manifest_is_empty(faulty_tree, tmp_path):
    run_cli('scan', '--data-root', faulty_tree.root, '--split', 'train', '--work-dir', tmp_path)
    res = run_cli('manifest', '--samples', 20, '--classes', 4, '--work-dir', tmp_path)
    assert 'the test manifest is empty' in res.stderr
    assert read_manifest(tmp_path/'stage1'/'single_only', 'test').empty


def test_a_failed_reconversion_keeps_the_previous_good_one(work, tmp_path):
    yolo = work/'stage1'/'max_combo'/'yolo'
    before = snapshot(yolo)
    elsewhere = tmp_path/'elsewhere'; elsewhere.mkdir()  # a data root without the images: nothing converts
    res = run_cli('convert-yolo', '--strategy', 'max_combo', '--work-dir', work, '--data-root', elsewhere, check=False)
    assert res.returncode == 2 and 'no image could be converted' in res.stderr
    assert snapshot(yolo) == before
    assert not [p for p in yolo.parent.iterdir() if p.name.startswith('.yolo')]
