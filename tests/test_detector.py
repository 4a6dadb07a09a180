"""The YOLO11 detector trainer on a real converted synthetic set: JSONL records, stop and resume, a hard kill."""
import json, os, signal, subprocess, sys, time
import pytest
from pillsnap.detector import MODEL, DetectorTrainer, detector_state, find_data_yaml
from pillsnap.runlog import read_metrics

FAST = dict(imgsz=64, batch=8, workers=0)  # a few yolo11n steps on CPU


def test_a_few_detector_steps_write_step_and_epoch_records_and_weights(stage3_manifest, tmp_path):
    res = DetectorTrainer(stage3_manifest, tmp_path, epochs=1, log_every=1, **FAST).fit()
    assert (res.epochs_done, res.stopped) == (1, False) and res.last.exists() and res.best.exists()
    steps, epochs = read_metrics(tmp_path, 'step', MODEL), read_metrics(tmp_path, 'epoch', MODEL)
    n_batches = -(-len(list((stage3_manifest/'yolo'/'labels'/'train').glob('*.txt'))) // 8)
    assert steps.step.tolist() == list(range(1, n_batches + 1))
    assert (steps.img_size == 64).all() and (steps.micro_batch == 8).all() and (steps.rss_mb > 0).all()
    assert (steps.loss - steps.box_loss - steps.cls_loss - steps.dfl_loss).abs().max() < 1e-3
    assert 'gpu_mem_mb' not in steps  # no GPU here: never invented
    assert epochs.epoch.tolist() == [1]
    for k in ('map50', 'map50_95', 'precision', 'recall'): assert 0 <= epochs[k].iloc[0] <= 1
    assert json.loads((tmp_path/MODEL/'classes.json').read_text())['names'] == {'0': 'pill'}
    est = read_metrics(tmp_path, 'event', MODEL).query('event == "estimate"')
    assert len(est) == 1 and est.seconds.iloc[0] >= 0  # one time estimate, after the first timed steps
    assert detector_state(tmp_path).finished


def test_detector_stopped_after_an_epoch_resumes_to_the_planned_epochs(stage3_manifest, tmp_path):
    res = DetectorTrainer(stage3_manifest, tmp_path, epochs=3, **FAST).fit(on_epoch_end=lambda t, rec: t.request_stop())
    assert (res.stopped, res.epochs_done) == (True, 1)
    st = detector_state(tmp_path)
    assert (st.epochs_done, st.epochs, st.finished) == (1, 3, False)
    with pytest.raises(FileExistsError, match='resume'): DetectorTrainer(stage3_manifest, tmp_path, **FAST).fit()
    tr = DetectorTrainer(stage3_manifest, tmp_path, resume=True, workers=0)
    assert (tr.epochs, tr.imgsz, tr.batch, tr.epoch) == (3, 64, 8, 1)  # the checkpoint's plan, not the profile's
    res = tr.fit()
    assert (res.stopped, res.epochs_done) == (False, 3) and detector_state(tmp_path).finished
    assert read_metrics(tmp_path, 'epoch', MODEL).epoch.tolist() == [1, 2, 3]
    events = [e for e in read_metrics(tmp_path, 'event', MODEL).event if e != 'estimate']
    assert events == ['start', 'stop', 'resume', 'final_eval', 'done']
    assert DetectorTrainer(stage3_manifest, tmp_path, resume=True).fit().epochs_done == 3  # finished: not trained again


KILLED = '''
import sys
from pillsnap.detector import DetectorTrainer
DetectorTrainer(sys.argv[1], sys.argv[2], epochs=3, imgsz=64, batch=8, workers=0).fit()
'''


def test_detector_killed_mid_run_resumes_from_its_last_epoch(stage3_manifest, tmp_path):
    proc = subprocess.Popen([sys.executable, '-c', KILLED, str(stage3_manifest), str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (tmp_path/'metrics.jsonl').exists() and '"kind": "epoch"' in (tmp_path/'metrics.jsonl').read_text(): break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally: proc.wait()
    st = detector_state(tmp_path)
    assert 1 <= st.epochs_done < 3 and not st.finished
    res = DetectorTrainer(stage3_manifest, tmp_path, resume=True, workers=0).fit()
    assert (res.epochs_done, res.stopped) == (3, False)
    assert read_metrics(tmp_path, 'epoch', MODEL).epoch.tolist() == [1, 2, 3]


def test_a_manifest_without_a_yolo_set_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='convert the manifest first'): find_data_yaml(tmp_path)


def test_a_per_code_detector_names_its_classes_by_k_code(stage3_manifest, tmp_path):
    from pillsnap.yolo import coco_to_yolo
    coco_to_yolo(stage3_manifest, tmp_path/'yolo_codes', per_code_classes=True)
    tr = DetectorTrainer(tmp_path/'yolo_codes', tmp_path/'run', epochs=1, **FAST)
    codes = {c['id']: c['code'] for c in json.loads((stage3_manifest/'class_mapping.json').read_text())['classes']}
    assert tr.names == codes and all(v.startswith('K-') for v in tr.names.values())
    tr._write_classes()
    assert json.loads((tmp_path/'run'/MODEL/'classes.json').read_text())['names'] == {str(k): v for k, v in codes.items()}
