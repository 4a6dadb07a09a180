"""The `pillsnap` command end to end: help, configuration layers, and the same results as the Python API."""
import json
import pandas as pd
from conftest import run_cli
from pillsnap.layout import file_stem, image_path
from pillsnap.scan import scan

COMMANDS = ('synth', 'scan', 'manifest', 'convert-yolo')


def test_help_lists_every_subcommand_and_each_has_its_own_help():
    top = run_cli('--help').stdout
    for cmd in COMMANDS:
        assert cmd in top
        assert f'usage: pillsnap {cmd}' in run_cli(cmd, '--help').stdout


def test_scan_without_data_root_names_the_three_ways_to_set_it(tmp_path):
    res = run_cli('scan', cwd=tmp_path, check=False)
    assert res.returncode == 2
    for way in ('--data-root', 'config.yaml', 'PILLSNAP_DATA_ROOT'):
        assert way in res.stderr


def test_flag_beats_config_file_beats_environment_beats_default(tmp_path, faulty_tree):
    empty = tmp_path/'empty'  # a one-image tree: a scan refuses a root without any AIHub file
    one = empty/image_path('train', ['K-000001'], file_stem('K-000001', (0, 0, 0, 0, 90, 0)))
    one.parent.mkdir(parents=True); one.touch()
    (tmp_path/'config.yaml').write_text(f'data_root: {faulty_tree.root}\nseed: 7\n')
    env = {'PATH': '/usr/bin:/bin', 'PILLSNAP_DATA_ROOT': str(empty)}

    def resolved(*flags):
        run_cli('scan', '--check', 'names', '--out', tmp_path/'inv', *flags, cwd=tmp_path, env=env)
        cfg = json.loads((tmp_path/'inv'/'run.json').read_text())['config']
        return cfg['data_root'], cfg['seed']

    assert resolved() == (str(faulty_tree.root), 7)                          # file beats environment
    assert resolved('--data-root', empty, '--seed', 3) == (str(empty), 3)   # flags beat the file
    (tmp_path/'config.yaml').unlink()
    assert resolved() == (str(empty), 42)                                     # environment, then the default


def test_cli_scan_gives_the_same_inventory_as_the_python_function(tmp_path, faulty_tree):
    run_cli('scan', '--data-root', faulty_tree.root, '--check', 'images', '--out', tmp_path/'cli')
    py = scan(faulty_tree.root, tmp_path/'py', check='images', progress=False)
    cli_inv = pd.read_parquet(tmp_path/'cli'/'inventory.parquet')
    pd.testing.assert_frame_equal(cli_inv, pd.read_parquet(tmp_path/'py'/'inventory.parquet'))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'cli'/'quarantine.csv'), pd.read_csv(tmp_path/'py'/'quarantine.csv'))
    assert len(cli_inv) == len(py.inventory) == len(faulty_tree.images)


def test_synth_cli_writes_the_same_tree_as_the_python_function(tmp_path, faulty_tree):
    run_cli('synth', tmp_path/'cli', '--classes', 8, '--per-class', 6, '--combos', 6, '--faults')
    cli_images = pd.read_csv(tmp_path/'cli'/'synth_images.csv')
    pd.testing.assert_frame_equal(cli_images, pd.read_csv(faulty_tree.root/'synth_images.csv'))
    some = cli_images.path.iloc[0]
    assert (tmp_path/'cli'/some).read_bytes() == (faulty_tree.root/some).read_bytes()
