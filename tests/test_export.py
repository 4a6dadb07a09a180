"""ONNX export of a real tiny run: parity within 1e-3 and full top-1 agreement; a deliberately altered graph fails the
check; the predictor on the ONNX files gives the PyTorch predictions; the exported detector run directly in ONNX Runtime
gives ultralytics' boxes; the int8 export has its own parity block and the predictor runs it."""
import json, shutil
import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import box_iou
from onnx import numpy_helper
from conftest import run_cli
from eval_run import split_files, tiny_run  # noqa: F401 (fixture)
from PIL import Image
from pillsnap.export import INT8_MIN_AGREEMENT, ParityError, check_parity, classifier_parity, export, sample_inputs
from pillsnap.predict import Detector, OnnxClassifier, TorchClassifier, TwoStagePredictor, predict, run_files


@pytest.fixture(scope='module')
def exported(tiny_run):
    return export(tiny_run, int8=True)


def test_export_passes_parity_and_writes_the_report(tiny_run, exported):
    assert exported.classifier.exists() and exported.detector.exists()
    rep = json.loads((tiny_run/'export_report.json').read_text())
    p = rep['parity']
    assert p['passed'] and p['max_abs_logit_diff'] <= 1e-3 and p['top1_agreement'] == 1.0 and p['samples'] >= 8
    assert rep['opset'] == 17 and rep['detector_parity']['images'] > 0
    m = onnx.load(str(exported.classifier))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'


def test_an_altered_onnx_graph_fails_parity(tiny_run, exported, tmp_path):
    m = onnx.load(str(exported.classifier))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    a = numpy_helper.to_array(init).copy() * 1.5
    init.CopyFrom(numpy_helper.from_array(a, init.name))
    onnx.save(m, str(tmp_path/'altered.onnx'))
    tc = TorchClassifier(run_files(tiny_run)['classifier'])
    x, _ = sample_inputs(tiny_run, tc)
    rep = classifier_parity(tc, tmp_path/'altered.onnx', x)
    assert not rep['passed'] and rep['max_abs_logit_diff'] > 1e-3
    with pytest.raises(ParityError, match='parity failed'): check_parity(rep)


def test_predictor_on_onnx_matches_pytorch(tiny_run, exported):
    files, df = split_files(tiny_run, 'test', 'combo')
    pt = TwoStagePredictor(tiny_run).predict(files[:3], mode='combo', conf=0.5)
    ox = TwoStagePredictor(classifier=exported.classifier, detector=exported.detector).predict(files[:3], mode='combo', conf=0.5)
    assert [len(p.pills) for p in ox] == df.n_pills[:3].tolist()
    assert [[q.code for q in p.pills] for p in ox] == [[q.code for q in p.pills] for p in pt]


@pytest.mark.parametrize('conf', [0.25, 0.5])
def test_onnx_detector_in_onnx_runtime_gives_ultralytics_boxes(tiny_run, exported, conf):
    files, _ = split_files(tiny_run, 'test', 'combo')
    imgs = [Image.open(f).convert('RGB') for f in files[:8]]
    direct, ref = Detector(exported.detector), Detector(exported.detector, ultralytics=True)
    assert direct.direct and direct.yolo is None and not ref.direct
    a, b = direct(imgs, conf, iou=0.5), ref(imgs, conf, iou=0.5)
    assert sum(len(x[0]) for x in b) >= 8  # the reference finds pills: the comparison is not vacuous
    for (ba, sa), (bb, sb), im in zip(a, b, imgs):
        assert len(ba) == len(bb)  # same count, same order (best score first)
        if not len(ba): continue
        assert float(box_iou(torch.tensor(ba), torch.tensor(bb)).diag().min()) >= 0.99
        assert np.allclose(sa, sb, atol=1e-4)
        assert (ba[:, :2] >= 0).all() and (ba[:, 2] <= im.width).all() and (ba[:, 3] <= im.height).all()


def test_int8_export_has_its_parity_block_and_the_predictor_runs_it(tiny_run, exported, capsys):
    assert exported.classifier_int8.name == 'classifier.int8.onnx' and exported.classifier_int8.exists()
    q = json.loads((tiny_run/'export_report.json').read_text())['int8_parity']
    assert set(q) >= {'samples', 'max_abs_logit_diff', 'top1_agreement', 'min_top1_agreement', 'rule', 'passed'}
    assert q['passed'] and q['top1_agreement'] >= INT8_MIN_AGREEMENT == q['min_top1_agreement'] and q['samples'] >= 8
    assert 0 < q['max_abs_logit_diff']  # really quantised: not the fp32 graph under another name
    oc = OnnxClassifier(exported.classifier_int8)
    assert oc.meta['precision'] == 'int8' and oc.classes.code.tolist() == TorchClassifier(run_files(tiny_run)['classifier']).classes.code.tolist()
    ops = {n.op_type for n in onnx.load(str(exported.classifier_int8)).graph.node}
    assert 'QuantizeLinear' in ops and 'DequantizeLinear' in ops
    files, df = split_files(tiny_run, 'test', 'combo')
    pr = TwoStagePredictor(tiny_run, int8=True)
    assert pr.classifier.path == exported.classifier_int8 and pr.detector.direct
    preds = pr.predict(files[:3], mode='combo', conf=0.5)
    assert [len(p.pills) for p in preds] == df.n_pills[:3].tolist()
    res = predict(files[:2], mode='single', run=tiny_run, int8=True, json=True)
    assert len(res.predictions) == 2 and not res.errors and len(capsys.readouterr().out.splitlines()) == 2
    out = run_cli('predict', files[0], '--mode', 'combo', '--run', tiny_run, '--int8', '--json').stdout
    assert len(json.loads(out)['pills']) == df.n_pills[0]


def test_a_failed_or_superseded_int8_export_is_refused(tiny_run, exported, tmp_path):
    run = tmp_path/'run'
    shutil.copytree(tiny_run, run)  # an own copy: the module's export stays as it is
    q8 = run/'export'/'classifier.int8.onnx'
    q8.unlink()
    img = split_files(tiny_run, 'test', 'single')[0][0]
    with pytest.raises(ParityError, match='int8 classifier ONNX parity failed'):
        export(run, detector=False, int8=True, int8_min_agreement=1.01)  # a rule no int8 copy can pass
    rep = json.loads((run/'export_report.json').read_text())
    assert rep['classifier_int8'] is None and not rep['int8_parity']['passed'] and rep['int8_parity']['min_top1_agreement'] == 1.01
    assert not q8.exists() and not list((run/'export').glob('*.tmp*'))  # neither the failed file nor its temp file is left
    res = run_cli('predict', img, '--mode', 'single', '--run', run, '--int8', check=False)
    assert res.returncode != 0 and 'pillsnap export --run' in res.stderr and not res.stdout.strip()
    shutil.copy2(exported.classifier_int8, q8)  # an int8 file from an earlier export, then an export without --int8
    export(run, detector=False)
    assert json.loads((run/'export_report.json').read_text())['classifier_int8'] is None
    with pytest.raises(FileNotFoundError, match='did not write it'): TwoStagePredictor(run, int8=True)


def test_an_nms_export_of_the_detector_runs_through_ultralytics(tiny_run, exported, tmp_path):
    from pillsnap.offline import configure_offline
    configure_offline()
    from ultralytics import YOLO
    pt = run_files(tiny_run)['detector']
    f = shutil.move(YOLO(str(pt)).export(format='onnx', imgsz=Detector(pt).imgsz, nms=True, device='cpu', verbose=False), tmp_path/'nms.onnx')
    d = Detector(f)
    assert not d.direct and d.yolo is not None  # (1, 300, 6) output: not the raw layout the direct decoder reads
    files, df = split_files(tiny_run, 'test', 'combo')
    imgs = [Image.open(p).convert('RGB') for p in files[:4]]
    got, ref = d(imgs, 0.5), Detector(pt)(imgs, 0.5, iou=0.7)  # the export's own NMS keeps ultralytics' default IoU 0.7
    assert [len(b) for b, _ in got] == [len(b) for b, _ in ref] and sum(len(b) for b, _ in got) > 0
    for (bg, sg), (br, sr), im in zip(got, ref, imgs):
        assert ((0 < sg) & (sg <= 1)).all() and (bg[:, 2] <= im.width).all() and (bg[:, 3] <= im.height).all()
        if len(bg): assert float(box_iou(torch.tensor(bg), torch.tensor(br)).max(1).values.min()) >= 0.9


def test_a_truncated_or_empty_onnx_file_is_a_clear_error_naming_it(tiny_run, exported, tmp_path):
    "Half a classifier.onnx, an empty detector.onnx: one-line errors naming the file (the CLI prints them, no traceback)."
    half, empty = tmp_path/'classifier.onnx', tmp_path/'detector.onnx'
    half.write_bytes(exported.classifier.read_bytes()[: exported.classifier.stat().st_size // 2]); empty.write_bytes(b'')
    with pytest.raises(ValueError, match='not a readable ONNX model'): OnnxClassifier(half)
    with pytest.raises(ValueError, match='not a readable ONNX model'): Detector(empty)
    img = split_files(tiny_run, 'test', 'single')[0][0]
    r = run_cli('predict', img, '--mode', 'single', '--weights', half, check=False)
    assert r.returncode != 0 and str(half) in r.stderr and 'not a readable ONNX model' in r.stderr and 'Traceback' not in r.stderr
