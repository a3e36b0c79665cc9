"""Evaluation speed: the training metric (`make_map_metric`: one COCO evaluation, per-class numbers from its arrays)
against pycocotools' COCOeval on the same detections, in one process.

    python bench/eval.py [--images 5000] [--dets 100] [--classes 10] [--check-images 300] [--backend faster_coco_eval]

Prints both times, their ratio, the largest difference of the 12 COCO numbers, the largest difference of the
per-class mAP / mAR@100 against COCOeval run class by class (on the first --check-images images), and the peak memory.
"""
import argparse, contextlib, copy, io, resource, time
import numpy as np, torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from databricks_cv.config import TrainingConfig
from databricks_cv.model import COCO_METRICS, make_map_metric

def synthetic(n_images, n_dets, n_classes, seed=0):
    "Random ground truth (crowd boxes, small to large objects) and detections (near misses, wrong classes)."
    rng = np.random.default_rng(seed); preds, tgts = [], []
    for _ in range(n_images):
        g = int(rng.integers(1, 9)); xy = rng.uniform(0, 600, (g, 2)); wh = np.exp(rng.uniform(np.log(4), np.log(300), (g, 2)))
        gb = np.concatenate([xy, xy + wh], 1); gl = rng.integers(0, n_classes, g)
        j = rng.integers(0, g, n_dets); pb = gb[j] + rng.normal(0, 1, (n_dets, 4)) * wh[j].repeat(2, 1) * 0.15
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        pl = np.where(rng.random(n_dets) < 0.7, gl[j], rng.integers(0, n_classes, n_dets))
        preds.append({"boxes": torch.tensor(pb, dtype=torch.float32), "scores": torch.tensor(rng.random(n_dets), dtype=torch.float32),
                      "labels": torch.tensor(pl)})
        tgts.append({"boxes": torch.tensor(gb, dtype=torch.float32), "labels": torch.tensor(gl),
                     "iscrowd": torch.tensor((rng.random(g) < 0.03).astype(int)), "area": torch.tensor(wh[:, 0] * wh[:, 1], dtype=torch.float32)})
    return preds, tgts

def coco_files(preds, tgts, n_classes):
    "The same data as a COCO annotation dict and a results list (boxes converted to [x, y, w, h] in float32, as the metric does)."
    xywh = lambda b: torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()
    gt = {"images": [{"id": i} for i in range(len(tgts))], "categories": [{"id": c} for c in range(n_classes)], "annotations": []}
    for i, t in enumerate(tgts):
        for b, l, c, a in zip(xywh(t["boxes"]), t["labels"].tolist(), t["iscrowd"].tolist(), t["area"].tolist()):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "bbox": b, "category_id": l, "iscrowd": c, "area": a})
    res = [{"image_id": i, "bbox": b, "category_id": l, "score": s} for i, p in enumerate(preds)
           for b, l, s in zip(xywh(p["boxes"]), p["labels"].tolist(), p["scores"].tolist())]
    return gt, res

def cocoeval(gt, res, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(); g.dataset = copy.deepcopy(gt); g.createIndex()
        e = COCOeval(g, g.loadRes(copy.deepcopy(res)), "bbox")
        if cat_ids is not None: e.params.catIds = cat_ids
        e.evaluate(); e.accumulate(); e.summarize()
    return e.stats

if __name__ == "__main__":
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--images", type=int, default=5000); a.add_argument("--dets", type=int, default=100)
    a.add_argument("--classes", type=int, default=10); a.add_argument("--check-images", type=int, default=300)
    a.add_argument("--backend", default="faster_coco_eval")
    args = a.parse_args()
    preds, tgts = synthetic(args.images, args.dets, args.classes)
    gt, res = coco_files(preds, tgts, args.classes)
    t = time.perf_counter(); ref = cocoeval(gt, res); t_ref = time.perf_counter() - t
    metric = make_map_metric(TrainingConfig(map_backend=args.backend))
    t = time.perf_counter(); metric.update(preds, tgts); t_update = time.perf_counter() - t
    t = time.perf_counter(); ours = metric.compute(); t_ours = time.perf_counter() - t
    diff = max(abs(float(ours[k]) - ref[i]) for i, k in enumerate(COCO_METRICS))
    # per class, on a subset: COCOeval run on each class alone (the oracle) against the same subset through the metric
    n = min(args.check_images, args.images)
    sub = make_map_metric(TrainingConfig(map_backend=args.backend)); sub.update(preds[:n], tgts[:n]); sub_out = sub.compute()
    gt_n, res_n = coco_files(preds[:n], tgts[:n], args.classes)
    per = [cocoeval(gt_n, res_n, [int(c)]) for c in sub_out["classes"]]
    per_diff = max(max(abs(float(sub_out["map_per_class"][i]) - s[0]), abs(float(sub_out["mar_100_per_class"][i]) - s[8])) for i, s in enumerate(per))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.images} images x {args.dets} detections, {args.classes} classes, backend {args.backend}")
    print(f"pycocotools COCOeval (load, evaluate, accumulate, summarize): {t_ref:.2f} s")
    print(f"make_map_metric compute() (12 numbers + per class):        {t_ours:.2f} s  (update: {t_update:.2f} s)")
    print(f"ratio compute / COCOeval: {t_ours / t_ref:.3f}   (compute + update: {(t_ours + t_update) / t_ref:.3f})")
    print(f"largest difference, 12 numbers: {diff:.2e}; per class (first {n} images, {len(per)} classes): {per_diff:.2e}")
    print(f"peak memory of the process (RSS): {peak:.0f} MiB")
