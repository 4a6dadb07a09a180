"""The package is fit to serve: importing it writes nothing and loads no plotting or model library."""
import os, subprocess, sys
from pathlib import Path

CHECKOUT = Path(__file__).parent.parent


def test_importing_the_library_writes_nothing_and_loads_neither_pyplot_nor_ultralytics(tmp_path):
    code = ('import sys, pillsnap, pillsnap.work, pillsnap.config, pillsnap.manifest, pillsnap.yolo, pillsnap.stage, '
            'pillsnap.cli\n'
            'print(sorted(m for m in ("matplotlib", "matplotlib.pyplot", "ultralytics", "timm") if m in sys.modules))')
    home = tmp_path/'home'; home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ('YOLO_CONFIG_DIR', 'MPLCONFIGDIR', 'XDG_CACHE_HOME')}
    before = {p.name for p in CHECKOUT.iterdir()}
    res = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env={**env, 'HOME': str(home)},
                         capture_output=True, text=True, check=True)
    assert res.stdout.strip() == '[]'
    assert list(home.rglob('*')) == [] and [p for p in tmp_path.iterdir() if p != home] == []
    assert {p.name for p in CHECKOUT.iterdir()} == before


def test_the_command_is_an_entry_point_that_sets_up_offline_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('YOLO_', 'PILLSNAP_'))}
    cfg_dir = tmp_path/'ultra'
    res = subprocess.run([sys.executable, '-c', 'import os, sys; from pillsnap.cli import main; main(["--help"])'],
                         env={**env, 'YOLO_CONFIG_DIR': str(cfg_dir)}, capture_output=True, text=True)
    assert res.returncode == 0 and (cfg_dir/'Arial.ttf').exists()
