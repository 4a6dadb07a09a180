"""End-to-end combination with a converged detector: the classifier of bench/target_tiny.py's run and a detector
trained 45 epochs on the same manifest; writes WORK/e2e_det45.json.

    .venv/bin/python bench/target_tiny_detector45.py WORK   # after: bench/target_tiny.py --work WORK
"""
import json, sys, time
from pathlib import Path
from pillsnap.train import train
from pillsnap.predict import TwoStagePredictor
from pillsnap.evaluate import _split_items, _detection, gt_boxes_xyxy
from pillsnap.runlog import read_metrics
w = Path(sys.argv[1]); out = w/'det45'  # the --work folder of bench/target_tiny.py
c0 = time.process_time()
if not (out/'detector'/'weights'/'best.pt').exists():
    train(w/'manifest', out=out, target='detector', epochs=45, workers=0, echo=False)
cpu = time.process_time() - c0
ep = read_metrics(out, 'epoch', 'detector')
pr = TwoStagePredictor(w/'run', detector=out/'detector'/'weights'/'best.pt')
df, root = _split_items(w/'manifest', 'test', None, 42)
combos = df[df.kind == 'combo']
cfiles = [str(root/p) for p in combos.path]
gts = [gt_boxes_xyxy(b) for b in combos.boxes]; codes = [c.split('|') for c in combos.codes]
res = {}
for conf in (0.3, 0.5):
    det, combo, _ = _detection(pr, cfiles, gts, codes, 16, conf)
    res[conf] = dict(map50=det.get('map50'), **{k: combo[k] for k in ('images', 'pills', 'precision', 'recall', 'images_all_right', 'code_accuracy_of_detected')})
out_d = dict(detector_epochs=45, detector_val_map50_best=float(ep.map50.max()), detector_cpu_s=round(cpu, 1), test=res)
print(json.dumps(out_d, indent=1, default=str))
(w/'e2e_det45.json').write_text(json.dumps(out_d, indent=1, default=str))
