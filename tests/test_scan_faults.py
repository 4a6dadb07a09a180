"""Hostile input for the scanner (issue 7 §2 items 1-4, 9, 10): each on a real synthetic tree, broken as the issue says."""
import json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import psutil
import pytest
from conftest import run_cli
from pillsnap.layout import file_stem, image_path, label_files
from pillsnap.scan import CACHE_NAME, FAULTS, scan
from pillsnap.synth import synth


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    "A small synthetic tree with every injectable fault; tests break copies of it."
    return synth(tmp_path_factory.mktemp('made')/'aihub', classes=6, per_class=4, combos=4, scale=0.1, faults=True,
                 progress=False)


@pytest.fixture
def tree(made, tmp_path):
    "A fresh copy of the synthetic tree (links copied as links) and its truth tables."
    root = tmp_path/'data'
    shutil.copytree(made.root, root, symlinks=True)
    return root, made


def quiet(root, out, **kw):
    return scan(root, out, progress=False, **kw)


def a_single(made, split='train') -> tuple[str, str]:
    "A clean single-pill image kept in the truth table, and its one label JSON (built by `pillsnap.layout`)."
    row = made.images[(made.images.kind == 'single') & (made.images.split == split)].iloc[0]
    folder = int(row.path.split('/')[3].split('_')[1])  # the n of TS_n_single: synth puts the label in TL_n
    return row.path, label_files(split, [row.codes], Path(row.path).stem, folder)[0]


def edit(path: Path, **fields):
    doc = json.loads(path.read_text(encoding='utf-8'))
    for k, v in fields.items():
        if k == 'bbox': doc['annotations'][0]['bbox'] = v
        else: doc['images'][0][k] = v
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding='utf-8')


def faults_of(res, path) -> list:
    return res.quarantine[res.quarantine.path == path].fault.tolist()


def without_root_powers(*args) -> list:
    "A command that cannot bypass file permissions even when run by root (who otherwise reads a mode-000 file)."
    cmd = [sys.executable, *map(str, args)]
    return ['setpriv', '--bounding-set', '-dac_override,-dac_read_search', *cmd] if os.geteuid() == 0 else cmd


def scan_unprivileged(root, out, check='labels') -> pd.DataFrame:
    "Scan in a process that permissions apply to; its quarantine."
    code = f'from pillsnap.scan import scan; scan({str(root)!r}, {str(out)!r}, check={check!r}, progress=False)'
    subprocess.run(without_root_powers('-c', code), check=True, capture_output=True, text=True)
    return pd.read_csv(Path(out)/'quarantine.csv', keep_default_na=False)


def test_the_truth_tables_are_the_oracle(tree, tmp_path):
    root, made = tree
    res = quiet(root, tmp_path/'out', check='images')
    assert set(made.faults.fault) == set(FAULTS) - {'unreadable'}
    pd.testing.assert_frame_equal(res.quarantine[['path', 'fault', 'action']], made.faults)
    assert res.inventory.path.tolist() == made.images.path.tolist()


# §2.1 non-UTF-8 names
def test_non_utf8_names_are_quarantined_named_safely_and_the_scan_goes_on(tree, tmp_path):
    root, made = tree
    png, label = a_single(made)
    folder = os.fsencode(root/png).rsplit(b'/', 1)[0]
    os.makedirs(folder + b'/' + '사진'.encode('cp949'))
    shutil.copy(os.fsencode(root/png), folder + b'/' + '사진'.encode('cp949') + b'/a.png')
    shutil.copy(os.fsencode(root/label), os.fsencode(root/label).rsplit(b'/', 1)[0] + b'/\xb3\xaa.json')
    res = quiet(root, tmp_path/'out', check='images')
    odd = res.quarantine[res.quarantine.fault == 'non_utf8_name']
    assert len(odd) == 3 and odd.path.str.contains('\\x', regex=False).all()
    assert odd.message.str.contains("as CP949 (Korean Windows) it reads '사진'", regex=False).any()
    assert res.inventory.path.tolist() == made.images.path.tolist()
    assert len(pd.read_csv(tmp_path/'out'/'quarantine.csv')) == len(res.quarantine)


# §2.2 huge width / height
@pytest.mark.parametrize('field,value', [('width', 1e19), ('height', 9e18), ('width', 10**30)])
def test_a_huge_width_or_height_is_bad_json_not_a_traceback(tree, tmp_path, field, value):
    root, made = tree
    png, label = a_single(made)
    edit(root/label, **{field: value})
    res = quiet(root, tmp_path/'out')
    assert faults_of(res, label) == ['bad_json']
    assert res.quarantine.set_index('path').message[label].startswith('not a usable label JSON')
    assert png not in set(res.inventory.path)


def test_a_cp949_label_and_a_lone_surrogate_are_bad_json_and_the_inventory_reads_back(tree, tmp_path):
    "Arrow's JSON reader takes non-UTF-8 bytes as text; \\ud800 is text Python cannot write as UTF-8: both are bad_json."
    from pillsnap.scan import read_inventory
    root, made = tree
    singles = made.images[(made.images.kind == 'single') & (made.images.split == 'train')]
    pairs = []
    for _, row in singles.iloc[:2].iterrows():
        folder = int(row.path.split('/')[3].split('_')[1])
        pairs.append((row.path, label_files('train', [row.codes], Path(row.path).stem, folder)[0]))
    (png1, label1), (png2, label2) = pairs
    (root/label1).write_bytes((root/label1).read_text(encoding='utf-8').encode('cp949'))
    doc = json.loads((root/label2).read_text(encoding='utf-8'))
    doc['images'][0]['dl_name'] = 'x\ud800'
    (root/label2).write_text(json.dumps(doc), encoding='ascii')  # ensure_ascii: the escape "\ud800" in the file
    res = run_cli('scan', '--data-root', root, '--out', tmp_path/'out', '--check', 'images')
    assert res.returncode == 0
    q = pd.read_csv(tmp_path/'out'/'quarantine.csv', keep_default_na=False)
    bad = q[q.fault == 'bad_json'].set_index('path').message
    assert {label1, label2} <= set(bad.index)
    assert 'UnicodeDecodeError' in bad[label1] and 'UnicodeEncodeError' in bad[label2], bad.to_dict()
    inv = read_inventory(tmp_path/'out')
    assert inv.path.tolist() == [p for p in made.images.path if p not in (png1, png2)]
    again = run_cli('scan', '--data-root', root, '--out', tmp_path/'out', '--check', 'images')  # from the cache
    assert again.returncode == 0 and read_inventory(tmp_path/'out').path.tolist() == inv.path.tolist()
    assert pd.read_csv(tmp_path/'out'/'quarantine.csv', keep_default_na=False).equals(q)


def test_check_images_with_few_walk_units_keeps_the_pool_the_reader_thread_used(tmp_path, monkeypatch):
    "Walked in this process (< MIN_PARALLEL_UNITS), the pool is first used by the label-reader thread, then by the image check."
    import pillsnap.scan as S
    made = synth(tmp_path/'aihub', classes=4, per_class=3, combos=1, scale=0.1, progress=False)
    units = [p for p in (tmp_path/'aihub'/'train').glob('*/*/*') if p.is_dir()]
    assert len(units) < S.MIN_PARALLEL_UNITS
    monkeypatch.setattr(S, 'MIN_PARALLEL_FILES', 1)  # a tiny tree still uses the pool
    for _ in range(3):  # the workers used to die with the reader thread: BrokenProcessPool in the image check
        res = quiet(tmp_path/'aihub', tmp_path/'out', check='images', split='train', workers=2, no_cache=True)
        assert res.counts['images_verified'] == len(res.inventory) == (made.images.split == 'train').sum()
        assert res.quarantine.empty


# §2.3 the cache
def test_a_fixed_permission_error_is_not_served_from_the_cache(tree, tmp_path):
    root, made = tree
    png, label = a_single(made)
    os.chmod(root/label, 0)
    q = scan_unprivileged(root, tmp_path/'out')
    assert q[q.path == label].fault.tolist() == ['unreadable']
    os.chmod(root/label, 0o644)
    q = scan_unprivileged(root, tmp_path/'out')
    assert label not in set(q.path)
    assert png in set(pd.read_parquet(tmp_path/'out'/'inventory.parquet').path)


def test_an_edit_hidden_by_touch_r_and_another_data_root_are_read_again(tree, tmp_path):
    root, made = tree
    png, label = a_single(made)
    first = quiet(root, tmp_path/'out')
    st = os.stat(root/label)
    text = (root/label).read_text(encoding='utf-8')
    x = json.loads(text)['annotations'][0]['bbox'][0]
    new = x + 1 if len(str(x + 1)) == len(str(x)) else x - 1  # the same number of digits: the same size
    (root/label).write_text(re.sub(r'("bbox":\s*\[\s*)\d+', lambda m: f'{m[1]}{new}', text, count=1), encoding='utf-8')
    os.utime(root/label, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r: same mtime, and the same size
    assert ((root/label).stat().st_size, (root/label).stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = quiet(root, tmp_path/'out')
    assert again.counts['json_read'] == 1
    assert again.inventory.set_index('path').pills[png][0]['x'] != first.inventory.set_index('path').pills[png][0]['x']
    other = tmp_path/'other'
    shutil.copytree(root, other, symlinks=True)
    moved = quiet(other, tmp_path/'out')
    assert moved.counts['json_read'] == first.counts['json_read']  # another root: nothing taken from the cache


def test_no_cache_reads_everything_and_leaves_the_cache_alone(tree, tmp_path):
    root, made = tree
    first = quiet(root, tmp_path/'out')
    before = (tmp_path/'out'/CACHE_NAME).stat().st_mtime_ns
    again = quiet(root, tmp_path/'out', no_cache=True)
    assert again.counts['json_read'] == first.counts['json_read'] > 0
    assert (tmp_path/'out'/CACHE_NAME).stat().st_mtime_ns == before
    assert quiet(root, tmp_path/'out2', no_cache=True) and not (tmp_path/'out2'/CACHE_NAME).exists()


# §2.4 folder links
def test_a_link_back_up_is_reported_not_followed_and_following_links_refuses_the_cycle(tree, tmp_path):
    root, made = tree
    png, _ = a_single(made)
    os.symlink('../..', root/Path(png).parent/'up')
    res = quiet(root, tmp_path/'out', check='names')
    links = res.quarantine[res.quarantine.fault == 'linked_folder']
    assert len(links) == 2 and links.message.str.contains('not followed').all()
    assert res.counts['files'] < 2000
    followed = quiet(root, tmp_path/'out2', check='names', follow_links=True)
    assert followed.quarantine[followed.quarantine.fault == 'linked_folder'].message.str.contains('a cycle').all()
    assert followed.inventory.path.tolist() == res.inventory.path.tolist()


# §2.9 boxes outside the image
def test_a_box_outside_beyond_the_tolerance_drops_its_image_and_within_it_keeps_it(tree, tmp_path):
    root, made = tree
    singles = made.images[(made.images.kind == 'single') & (made.images.split == 'train')]
    near, far = singles.path.iloc[0], singles.path.iloc[1]
    res = quiet(root, tmp_path/'out0')
    for path, over in ((near, 3), (far, 20)):
        label = res.inventory.set_index('path').label_paths[path]
        doc = json.loads((root/label).read_text(encoding='utf-8'))
        w = doc['images'][0]['width']
        x, y, bw, bh = doc['annotations'][0]['bbox']
        edit(root/label, bbox=[w - bw + over, y, bw, bh])
    res = quiet(root, tmp_path/'out')
    assert near in set(res.inventory.path) and far not in set(res.inventory.path)
    row = res.quarantine[res.quarantine.message.str.endswith(far)].iloc[0]
    assert (row.fault, row.action) == ('box_outside_image', 'skipped') and 'more than 4 px' in row.message
    assert not res.quarantine.message.str.endswith(near).any()


# §2.10 silent or misleading outcomes
def test_a_root_that_is_empty_too_deep_too_high_or_has_train_as_a_file_is_refused(tree, tmp_path):
    root, _ = tree
    (tmp_path/'empty').mkdir()
    with pytest.raises(ValueError, match='holds no train/ or val/ folder'): quiet(tmp_path/'empty', tmp_path/'o1')
    with pytest.raises(ValueError, match='one level too deep'): quiet(root/'train', tmp_path/'o2')
    with pytest.raises(ValueError, match='one level too high'): quiet(tmp_path, tmp_path/'o3')
    (tmp_path/'filed').mkdir(); (tmp_path/'filed'/'train').write_text('x')
    with pytest.raises(ValueError, match='is a file'): quiet(tmp_path/'filed', tmp_path/'o4')
    (tmp_path/'hollow'/'train'/'images').mkdir(parents=True)
    with pytest.raises(ValueError, match='no AIHub image or label file'): quiet(tmp_path/'hollow', tmp_path/'o5')
    res = run_cli('scan', '--data-root', tmp_path/'empty', '--out', tmp_path/'o6', check=False)
    assert res.returncode != 0 and 'empty' in res.stderr and 'train/' in res.stderr


def test_an_unreadable_image_folder_is_one_fault_not_orphan_label_noise(tree, tmp_path):
    root, made = tree
    png, _ = a_single(made)
    folder = Path(png).parent.as_posix()
    code = Path(folder).name
    n_labels = sum(len(list(d.glob('*.json'))) for d in (root/'train/labels/single').glob(f'*/{code}_json'))
    os.chmod(root/folder, 0)
    try: q = scan_unprivileged(root, tmp_path/'out')
    finally: os.chmod(root/folder, 0o755)
    row = q[q.path == folder].iloc[0]
    assert row.fault == 'unreadable' and 'Permission denied' in row.message
    injected = made.faults[(made.faults.fault == 'orphan_label') & made.faults.path.str.contains(f'/{code}_json/')]
    assert f'{n_labels - len(injected)} file(s) on the other side (orphan_label)' in row.message
    assert not q[q.fault == 'orphan_label'].path.str.contains(f'/{code}_json/').any()


def test_duplicate_stems_label_mismatch_and_zero_byte_images(tree, tmp_path):
    root, made = tree
    png, label = a_single(made)
    copy = png.replace(png.split('/')[3], 'TS_9_single')
    (root/copy).parent.mkdir(parents=True); shutil.copy(root/png, root/copy)
    other_png, other_label = a_single(made, 'val')
    edit(root/other_label, file_name='K-000000_0_0_0_0_60_000_200.png')
    res = quiet(root, tmp_path/'out')
    assert faults_of(res, copy) == ['duplicate_image'] and png in set(res.inventory.path)
    assert faults_of(res, other_label) == ['label_mismatch'] and other_png not in set(res.inventory.path)
    empty = made.faults.query("fault == 'corrupt_image'").path
    assert {tuple(faults_of(res, p)) for p in empty if (root/p).stat().st_size == 0} == {('corrupt_image',)}


def test_a_fifo_or_a_huge_file_named_like_a_label_is_quarantined_not_waited_on(tree, tmp_path):
    "A named pipe has no writer: opening it the usual way blocks forever; a huge file would fill memory. Both are listed."
    root, made = tree
    png, label = a_single(made)
    other_png, _ = a_single(made, 'val')
    for p in (label, other_png): (root/p).unlink(); os.mkfifo(root/p)
    _, huge = a_single(made, 'val')
    os.truncate(root/huge, 100 << 20)  # a sparse 100 MB 'label': refused by its size, never read into memory
    for check, no_cache in (('labels', False), ('images', False), ('labels', True)):  # no_cache reads without a stat first
        out = tmp_path/f'{check}{no_cache}'
        code = f'from pillsnap.scan import scan; scan({str(root)!r}, {str(out)!r}, check={check!r}, no_cache={no_cache}, progress=False)'
        subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, timeout=300)  # a hang fails here
        q = pd.read_csv(out/'quarantine.csv')
        assert q[q.path == label].message.str.contains('not a regular file').all() and (q.path == label).any(), q[q.path == label]
        inv = set(pd.read_parquet(out/'inventory.parquet').path)
        assert png not in inv and other_png not in inv
        if check == 'images': assert 'not a regular file' in q[q.path == other_png].message.iloc[0]
        assert 'more than 64 MB' in q[q.path == huge].message.iloc[0]  # refused by its size, or after 64 MB without a stat


def big_tree(root: Path, n: int = 8000, codes: int = 200) -> Path:
    "`n` zero-byte single-pill images and their small label JSONs, over 12 TS_n/TL_n folders (paths by `pillsnap.layout`)."
    for i in range(n):
        code, k = f'K-{i % codes + 1:06d}', i % codes % 12 + 1
        stem = file_stem(code, (i // codes, 0, 0, 0, 90, 0))
        img, lab = root/image_path('train', [code], stem, k), root/label_files('train', [code], stem, k)[0]
        if i < codes: img.parent.mkdir(parents=True); lab.parent.mkdir(parents=True)
        img.touch()
        lab.write_text(json.dumps({'images': [{'width': 100, 'height': 100, 'drug_N': code, 'file_name': f'{stem}.png'}],
                                   'annotations': [{'bbox': [1, 2, 3, 4]}]}))
    return root


def test_a_killed_scan_leaves_no_worker_and_its_stale_tmp_files_are_removed_next_time(tmp_path):
    root, out = big_tree(tmp_path/'big'), tmp_path/'out'
    code = f'from pillsnap.scan import scan; scan({str(root)!r}, {str(out)!r}, workers=2, no_cache=True, progress=False)'
    proc = subprocess.Popen([sys.executable, '-c', code], stderr=subprocess.DEVNULL)
    parent, workers, deadline = psutil.Process(proc.pid), [], time.monotonic() + 60
    while not workers and proc.poll() is None and time.monotonic() < deadline:
        workers = [c for c in parent.children(recursive=True) if c.is_running()]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    assert workers, 'the scan finished before a pool started: make the tree bigger'
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f'orphaned pool workers: {alive}'
    out.mkdir(exist_ok=True)
    stale, foreign = out/'.inventory.parquet.k9x2ab.tmp', out/'.notes.txt.k9x2ab.tmp'
    stale.write_bytes(b'half'); foreign.write_bytes(b'not ours')
    quiet(root, out, check='names')
    assert not stale.exists() and foreign.exists()
