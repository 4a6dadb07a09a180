"""ONNX export of a real tiny run: parity within 1e-3 and full top-1 agreement; a deliberately altered graph fails the
check; the predictor on the ONNX files gives the PyTorch predictions."""
import json
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from eval_run import split_files, tiny_run  # noqa: F401 (fixture)
from pillsnap.export import ParityError, check_parity, classifier_parity, export, sample_inputs
from pillsnap.predict import TorchClassifier, TwoStagePredictor, run_files


@pytest.fixture(scope='module')
def exported(tiny_run):
    return export(tiny_run)


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
