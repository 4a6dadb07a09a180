"""`evaluate` on a real tiny run: metrics written and merged per split, gates (fail below a threshold, 'not measured'
when missing), a few seconds of soak with real measurements, and the readiness report."""
import json
import pytest
from eval_run import tiny_run  # noqa: F401 (fixture)
from pillsnap.evaluate import check_gates, evaluate, read_predictions, readiness


@pytest.fixture(scope='module')
def result(tiny_run):
    return evaluate(tiny_run, split='test', mode='both', soak_minutes=0.08, max_images=16, latency_images=8, throughput_batch=4)


def test_metrics_are_measured_and_written(tiny_run, result):
    m = json.loads((tiny_run/'metrics.json').read_text())['test']
    c, d, e = m['classification'], m['detection'], m['combo']
    assert 0 <= c['top5'] <= 1 and c['top1'] <= c['top5'] and 0 <= c['macro_f1'] <= 1
    assert set(c['top1_by_crop']) == {'whole', 'foreground', 'detect'} and c['single_crop'] == 'detect'
    assert c['per_class'] and all(0 <= r['accuracy'] <= 1 for r in c['per_class'])
    assert 0 < d['map50'] <= 1 and d['map50_95'] <= d['map50'] and d['boxes'] > 0
    assert e['pills'] == d['boxes'] and 0 <= e['recall'] <= 1 and 0 <= e['images_all_right'] <= 1
    for mode in ('single', 'combo'):
        lat = m['latency'][mode]
        assert 0 < lat['p50'] <= lat['p95'] <= lat['p99'] and len(lat['samples']) == 8
        assert m['throughput'][mode]['images_per_s'] > 0
    assert 'CPU' in m['device']
    assert m['figures'] == dict(top1=c['top1'], p95_ms=m['latency']['single']['p95'], combo_map50=d['map50'])


def test_gates_fail_below_threshold_and_missing_is_not_measured(result):
    f = result.metrics['figures']
    g = {x['metric']: x for x in check_gates(f, 3, {'top1': f['top1'] + 0.01, 'p95_ms': f['p95_ms'] * 2, 'combo_map50': 0.0})}
    assert (g['top1']['status'], g['p95_ms']['status'], g['combo_map50']['status']) == ('fail', 'pass', 'pass')
    assert g['top1']['value'] == f['top1']
    g = {x['metric']: x['status'] for x in check_gates({**f, 'combo_map50': None}, 3, {'combo_map50': 0.0})}
    assert g['combo_map50'] == 'not measured'
    assert [x['status'] for x in check_gates({}, 1)] == ['not measured'] * 2


def test_predictions_table_holds_the_answers_the_metrics_counted(tiny_run, result):
    p = read_predictions(tiny_run, 'test')
    assert (tiny_run/'eval'/'test'/'predictions.csv').exists() and result.metrics['predictions'].endswith('predictions.parquet')
    single, combo, m = p[p['mode'] == 'single'], p[p['mode'] == 'combo'], result.metrics
    assert abs(single.correct.mean() - m['classification']['top1']) < 1e-6
    assert len(combo) == m['combo']['images'] and combo.correct.sum() == round(m['combo']['images_all_right'] * len(combo))
    assert combo.boxes.map(len).sum() == m['combo']['predicted'] == combo.scores.map(len).sum()
    assert (combo.pred_codes.str.split('|').map(len) == combo.boxes.map(len)).where(combo.pred_codes != '', True).all()


def test_soak_gives_real_measurements(result):
    s = result.metrics['soak']
    assert s['iterations'] > 3 and s['errors'] == 0 and 4 <= s['duration_s'] < 30
    assert s['rss_mb_start'] > 0 and s['rss_mb_end'] > 0 and isinstance(s['rss_slope_mb_per_min'], float)
    assert len(s['series']['t_s']) == len(s['series']['rss_mb']) == len(s['series']['latency_ms']) > 3
    assert min(s['series']['latency_ms']) > 0 and s['latency_first_ms'] > 0


def test_val_evaluation_keeps_test_and_readiness_reports(tiny_run, result):
    evaluate(tiny_run, split='val', mode='single', max_images=6, latency_images=3, throughput_batch=2)
    m = json.loads((tiny_run/'metrics.json').read_text())
    assert set(m) == {'test', 'val'} and 'detection' not in m['val']
    assert [g['status'] for g in m['val']['gates']][2] == 'not measured'  # combo not evaluated on val
    r = readiness(tiny_run)
    assert r['metrics_split'] == 'test' and r['leak_check']['status'] in ('pass', 'fail')
    assert r['stability']['status'] in ('pass', 'fail') and r['coverage']['classes_in_head'] > 0
    assert r['coverage']['classes_beyond_head'] == r['coverage']['classes_in_class_map'] - r['coverage']['classes_in_head']
    assert r['ready'] == all(x['status'] == 'pass' for x in [*r['gates'], r['leak_check'], r['stability']])
    assert (tiny_run/'readiness.md').read_text().startswith('# Stage 4 readiness')
