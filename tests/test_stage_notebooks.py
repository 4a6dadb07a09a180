"""The per-stage notebooks: one body, papermill parameters, and a run on the embedded synthetic data."""
import json
import nbformat
from pathlib import Path

NBS = Path(__file__).parent.parent/'nbs'
STAGES = [NBS/f'stage{n}.ipynb' for n in (1, 2, 3, 4)]


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == 'code']


def test_every_stage_notebook_has_a_tagged_parameters_cell_first():
    for path in STAGES:
        first = code_cells(path)[0]
        assert 'parameters' in first.metadata.get('tags', []), path
        assert f'stage = {path.stem[-1]}' in first.source


def test_stage_notebooks_share_one_body_so_they_cannot_drift_apart():
    bodies = [[c.source for c in code_cells(p)[1:]] for p in STAGES]
    assert all(b == bodies[0] for b in bodies)


def test_papermill_runs_stage3_with_parameters_over_config_yaml_and_a_none_seed_keeps_a_seeded_manifest(tmp_path):
    """One papermill run (each costs a kernel and a tiny training; nbdev_test runs every stage notebook's body too):
    a strategy parameter wins over the default, `seed=None` falls back to config.yaml, and its work folder is kept."""
    import papermill as pm
    (tmp_path/'config.yaml').write_text('work_dir: w\nseed: 7\n')
    out = tmp_path/'stage3.ipynb'
    pm.execute_notebook(str(NBS/'stage3.ipynb'), str(out), parameters={'strategy': 'single_only', 'seed': None},
                        kernel_name='python3', cwd=str(tmp_path), progress_bar=False)
    report = json.loads((tmp_path/'w'/'stage3'/'single_only'/'sampling_report.json').read_text())
    assert report['strategy'] == 'single_only' and report['achieved']['train+val']['combo'] == 0
    assert report['seed'] == 7                                   # config.yaml, not None and not the default
    assert (tmp_path/'w'/'inventory'/'inventory.parquet').exists()   # a configured work folder is kept
    executed = nbformat.read(out, as_version=4)
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in executed.cells)
    assert sum('image/png' in o.get('data', {}) for c in executed.cells for o in c.get('outputs', [])) >= 6
