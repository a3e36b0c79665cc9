"""`databricks-cv train` against Hugging Face's own recipe: the quickstart's RT-DETR (the `quickstart_rt_detr` preset: the
quickstart's data, optimiser and budget with its first model; the quickstart itself now trains a D-FINE) trained once by
`databricks-cv train quickstart_rt_detr` and once by `transformers.Trainer` as the Hugging Face object-detection guide
does it, on the same shapes images and splits and the same wall-clock budget; both models scored by pycocotools'
COCOeval on the same fresh shapes images (seed 7, as bench/quickstart.py's big evaluation).

    python bench/vs_hf_trainer.py                          # ours, then the guide's Trainer recipe: ~25 min on 2 cores
    python bench/vs_hf_trainer.py --only hf --hf-lr 2e-3 --workdir W   # a tuned Trainer run beside an earlier run in W
    python bench/vs_hf_trainer.py --budget-min 0.5 --eval-images 50    # a smoke test (a few minutes)

Prints a table (variant, optimizer steps, epochs, wall s, mAP@50 and mAP on the fresh images) and the ratio of our
mAP@50 to each Trainer variant's (goal >= 1.05). Every result is also written to `WORKDIR/results.json`; rows of earlier
runs in the same work folder (same seed, budget and evaluation set) are listed too, marked as such.

The Trainer side (`run_hf`) follows the guide (transformers docs, tasks/object_detection): an `RTDetrImageProcessor`
that resizes to at most the input size and pads to it (128 px here, as `data.image_size` of the preset), the guide's
Albumentations pipeline in COCO box format, its `collate_fn`, its `TrainingArguments` (lr 5e-5, cosine over
`num_train_epochs` = 30, weight decay 1e-4, max_grad_norm 0.01, batch 8, evaluation and checkpoint every epoch, best
model by `eval_map` loaded at the end, then `evaluate` on the test split). Changed for this machine: no fp16, data
loading in the main process, no Hub, no reporting; the model is built from the preset's config (random init, as ours),
not from a pretrained checkpoint. A callback stops it when the next epoch would not fit in the budget (kept: one
evaluation's time for the final test, as ours keeps). `--hf-lr X` runs the tuned variant instead: learning rate X and a
cosine schedule re-laid after the first epoch over the number of epochs that fit the budget.

Scoring: ours from its best checkpoint (`DetectionModel.predict_batch` + `export_coco_results`), the Trainer's from its
best checkpoint (reloaded with `from_pretrained`: transformers 5.24's `load_best_model_at_end` drops RT-DETR's renamed
keys, transformers#48805) through `post_process_object_detection(threshold=0)`; both as COCO results (xywh, original px,
the ground truth's category ids), the top 50 per image (the RT-DETR processor keeps `num_queries` = 50, so ours is given
`max_detections=50` too; its default is 100), through the same pycocotools COCOeval.

transformers.Trainer needs `accelerate`, which databricks-cv does not: `pip install accelerate` (or, to keep it out of
the environment, `pip install --target /tmp/hfdeps accelerate --no-deps`; the script looks there, or in $HF_BENCH_DEPS).
"""
import argparse, contextlib, copy, io, json, logging, math, os, re, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import metrics_rows  # the same parsing of `databricks-cv train`'s metrics table

GUIDE_EPOCHS, GUIDE_LR = 30, 5e-5

def ensure_accelerate():
    "Make `import accelerate` work (Trainer needs it) before transformers is imported, or exit saying how to install it."
    try: import accelerate; return
    except ImportError: pass
    for d in (os.environ.get("HF_BENCH_DEPS"), "/tmp/hfdeps"):
        if d and (Path(d) / "accelerate").is_dir():
            sys.path.append(d)
            try: import accelerate; return
            except ImportError: sys.path.remove(d)
    sys.exit("transformers.Trainer needs `accelerate`, which is not a databricks-cv requirement: `pip install accelerate`, "
             "or `pip install --target /tmp/hfdeps accelerate --no-deps` to keep it out of this environment")

def preset(overrides=()):
    from databricks_cv.config import load_config
    return load_config("quickstart_rt_detr", list(overrides))

def make_data(work):
    "The preset's shapes set (same parameters as `databricks-cv train quickstart_rt_detr` makes), under the work folder."
    from databricks_cv.datasets import make_shapes_dataset
    s = preset().data.shapes
    return make_shapes_dataset(work / "shapes", s.n_images, s.image_size, s.seed, s.split_fractions, progress=False)

def make_eval_set(work, n, seed=7):
    "Fresh shapes images, all in the test split (as bench/quickstart.py's big_eval)."
    from databricks_cv.datasets import make_shapes_dataset
    s = preset().data.shapes
    return make_shapes_dataset(work / f"eval-{n}-seed{seed}", n, s.image_size, seed, (0.0, 0.0, 1.0), progress=False)

# ---------------------------------------------------------------------------------------------------------- ours
def run_ours(work, budget_min, seed):
    "`databricks-cv train quickstart_rt_detr` on the work folder's shapes set; wall time of the whole command."
    exe = Path(sys.executable).with_name("databricks-cv")
    cmd = [str(exe) if exe.is_file() else "databricks-cv", "train", "quickstart_rt_detr", f"training.output_dir={work}/runs", f"data.shapes.path={work}/shapes",
           f"training.seed={seed}"] + ([f"training.max_time={budget_min}"] if budget_min is not None else [])
    print("ours:", " ".join(cmd), flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode: sys.exit(f"databricks-cv train failed:\n{r.stderr[-3000:]}")
    print(r.stdout[-1500:])
    best = re.search(r"^best checkpoint: (.+)$", r.stdout, re.M).group(1).strip()
    import torch
    last = torch.load(Path(best).parent / "last.ckpt", map_location="cpu", weights_only=False)
    return {"variant": "ours", "desc": "databricks-cv train quickstart_rt_detr", "wall_s": wall, "steps": int(last["global_step"]),
            "epochs": float(last["epoch"] + 1), "test_map_50": metrics_rows(r.stdout).get("map_50", [None])[-1],
            "checkpoint": best}

def predict_ours(checkpoint, eval_set, k):
    "COCO results (xywh, original px, original category ids) of our checkpoint on the evaluation set, top `k` per image."
    import torch
    from dataclasses import replace
    from databricks_cv.model import DetectionModel
    from databricks_cv.data import DetectionDataModule
    from databricks_cv.adapters import get_adapter
    model = DetectionModel.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    d, n = model.config.data, len(json.loads(Path(eval_set.splits["test"].annotations).read_text())["images"])
    data = replace(d, shapes=replace(d.shapes, path=str(eval_set.root), n_images=n, seed=json.loads((eval_set.root / "shapes.json").read_text())["seed"],
                                     split_fractions=[0.0, 0.0, 1.0]))
    dm = DetectionDataModule(data, adapter=get_adapter(model.config.model.model_type)); dm.setup("test")
    with torch.no_grad(): preds = [model.predict_batch(b, 0.0, k) for b in dm.test_dataloader()]
    return model.export_coco_results(preds)

# ------------------------------------------------------------------------------------- Hugging Face Trainer (the guide)
class _DropRecords(logging.Filter):
    def __init__(self, *fragments): super().__init__(); self.fragments = fragments
    def filter(self, record): return not any(f in record.getMessage() for f in self.fragments)

class CocoShapes:
    "One COCO split as the guide's `with_transform` datasets give it: augment (COCO boxes), then the image processor."
    def __init__(self, split, transform, processor, label_of, return_pixel_mask=False):
        data = json.loads(Path(split.annotations).read_text())
        self.folder, self.images = Path(split.images), sorted(data["images"], key=lambda im: im["id"])
        self.anns = {im["id"]: [] for im in self.images}
        for a in data["annotations"]: self.anns[a["image_id"]].append(a)
        self.transform, self.processor, self.label_of, self.return_pixel_mask = transform, processor, label_of, return_pixel_mask
    def __len__(self): return len(self.images)
    def __getitem__(self, i):
        import numpy as np
        from PIL import Image
        im = self.images[i]
        image = np.array(Image.open(self.folder / im["file_name"]).convert("RGB"))
        anns = self.anns[im["id"]]
        out = self.transform(image=image, bboxes=np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4),
                             category=[self.label_of[a["category_id"]] for a in anns])
        boxes = [[float(v) for v in b] for b in out["bboxes"]]
        # the guide's annotation format; area of the augmented box (the guide passes the original areas, which go out
        # of step with the boxes when the augmentation drops one; the loss does not read them)
        target = {"image_id": im["id"], "annotations": [{"image_id": im["id"], "category_id": int(c), "iscrowd": 0,
                  "area": b[2] * b[3], "bbox": b} for c, b in zip(out["category"], boxes)]}
        res = self.processor(images=[out["image"]], annotations=[target], return_tensors="pt")
        item = {"pixel_values": res["pixel_values"][0], "labels": res["labels"][0]}
        if self.return_pixel_mask: item["pixel_mask"] = res["pixel_mask"][0]
        return item

def collate_fn(batch):
    "The guide's: stack the (same-size, already padded) images, keep the labels a list."
    import torch
    data = {"pixel_values": torch.stack([x["pixel_values"] for x in batch]), "labels": [x["labels"] for x in batch]}
    if "pixel_mask" in batch[0]: data["pixel_mask"] = torch.stack([x["pixel_mask"] for x in batch])
    return data

def make_compute_metrics(processor, id2label):
    "The guide's `compute_metrics`: torchmetrics mAP of the post-processed predictions against the targets, absolute xyxy."
    import numpy as np, torch
    from types import SimpleNamespace
    from torchmetrics.detection import MeanAveragePrecision
    from transformers.image_transforms import center_to_corners_format
    @torch.no_grad()
    def compute_metrics(evaluation_results):
        predictions, targets = evaluation_results.predictions, evaluation_results.label_ids
        sizes, post_targets, post_preds = [], [], []
        for batch in targets:
            sizes.append(torch.tensor(np.array([x["orig_size"] for x in batch])))
            for t in batch:
                h, w = t["orig_size"]
                boxes = center_to_corners_format(torch.as_tensor(t["boxes"])) * torch.tensor([w, h, w, h])
                post_targets.append({"boxes": boxes, "labels": torch.as_tensor(t["class_labels"])})
        for batch, target_sizes in zip(predictions, sizes):
            logits, pred_boxes = torch.as_tensor(batch[1]), torch.as_tensor(batch[2])  # after loss_dict, as in the guide
            assert logits.shape[-1] == len(id2label) and pred_boxes.shape[-1] == 4, "unexpected output order"
            out = SimpleNamespace(logits=logits, pred_boxes=pred_boxes)
            post_preds.extend(processor.post_process_object_detection(out, threshold=0.0, target_sizes=target_sizes))
        metric = MeanAveragePrecision(box_format="xyxy", class_metrics=True)
        metric.update(post_preds, post_targets)
        m = metric.compute()
        classes, per_map, per_mar = m.pop("classes"), m.pop("map_per_class"), m.pop("mar_100_per_class")
        for c, a, r in zip(classes.view(-1), per_map.view(-1), per_mar.view(-1)):
            m[f"map_{id2label[int(c)]}"], m[f"mar_100_{id2label[int(c)]}"] = a, r
        return {k: round(float(v), 4) for k, v in m.items()}
    return compute_metrics

def budget_callback(budget_s, fit_schedule, margin=0.05):
    "Stop when the next epoch would not fit the budget (one evaluation's time kept for the final test, as ours)."
    from transformers import TrainerCallback
    class Budget(TrainerCallback):
        def __init__(self): self.t0, self.eval_s, self.planned, self.log = None, 0.0, None, []
        def on_train_begin(self, args, state, control, **kw): self.t0 = time.time()
        def on_epoch_end(self, args, state, control, **kw): self.t_epoch = time.time()
        def on_step_end(self, args, state, control, **kw):  # a safety net only: epochs slower than planned
            if time.time() - self.t0 > budget_s - 2 * self.eval_s: control.should_training_stop = True
        def on_save(self, args, state, control, lr_scheduler=None, train_dataloader=None, metrics=None, **kw):
            now = time.time()
            self.eval_s, elapsed, done = now - self.t_epoch, now - self.t0, max(round(state.epoch), 1)
            more = int(max(budget_s - elapsed - self.eval_s, 0) * (1 - margin) // (elapsed / done))
            if fit_schedule and self.planned is None:  # the tuned variant: cosine over the epochs that fit
                self.planned = min(int(args.num_train_epochs), done + more)
                total = self.planned * len(train_dataloader)
                sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # a LambdaLR, perhaps wrapped by accelerate
                sched.lr_lambdas = [lambda s: max(0.0, 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))] * len(sched.lr_lambdas)
            if more < 1: control.should_training_stop = True
            best, lr = state.best_metric, getattr(lr_scheduler, "scheduler", lr_scheduler).get_last_lr()[0]
            print(f"  hf epoch {state.epoch:.1f}: step {state.global_step}, lr {lr:.3g}, {elapsed:.0f} s, eval_map "
                  f"{state.log_history[-1].get('eval_map', float('nan')) if state.log_history else float('nan'):.4f}, "
                  f"best {best if best is not None else float('nan'):.4f}" + (f", schedule laid over {self.planned} epochs" if self.planned and done == 1 else ""), flush=True)
    return Budget()

def run_hf(work, data, budget_s, seed, lr=None, epochs=GUIDE_EPOCHS):
    "The guide's Trainer recipe on the same splits; `lr` given: the tuned variant (that rate, cosine fitted to the budget)."
    t0 = time.time()
    import albumentations as A
    from transformers import (RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, Trainer, TrainingArguments,
                              set_seed)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from databricks_cv.images import category_map
    cfg = preset()
    size = cfg.data.image_size
    cat_ids, names = category_map(json.loads(Path(data.splits["train"].annotations).read_text())["categories"])
    id2label = dict(enumerate(names)); label2id = {v: k for k, v in id2label.items()}
    label_of = {c: i for i, c in enumerate(cat_ids)}
    set_seed(seed)
    model = RTDetrForObjectDetection(RTDetrConfig(**copy.deepcopy(cfg.model.hf_config), num_labels=len(names),
                                                  id2label=id2label, label2id=label2id))
    processor = RTDetrImageProcessor(do_resize=True, size={"max_height": size, "max_width": size},
                                     do_pad=True, pad_size={"height": size, "width": size})
    train_aug = A.Compose([A.Perspective(p=0.1), A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5),
                           A.HueSaturationValue(p=0.1)],
                          bbox_params=A.BboxParams(format="coco", label_fields=["category"], clip=True, min_area=25))
    val_aug = A.Compose([A.NoOp()], bbox_params=A.BboxParams(format="coco", label_fields=["category"], clip=True))
    train_ds, val_ds, test_ds = (CocoShapes(data.splits[s], t, processor, label_of)
                                 for s, t in (("train", train_aug), ("val", val_aug), ("test", val_aug)))
    tuned = lr is not None
    name = f"hf-tuned-lr{lr:g}" if tuned else "hf-guide"
    args = TrainingArguments(
        output_dir=str(work / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"), num_train_epochs=epochs,
        fp16=False,  # CPU
        per_device_train_batch_size=8,
        dataloader_num_workers=0, dataloader_pin_memory=False,  # guide: 4 workers; 2 cores here, ours loads in-process too
        learning_rate=lr if tuned else GUIDE_LR, lr_scheduler_type="cosine", weight_decay=1e-4, max_grad_norm=0.01,
        metric_for_best_model="eval_map", greater_is_better=True, load_best_model_at_end=True,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, remove_unused_columns=False,
        eval_do_concat_batches=False, push_to_hub=False, report_to="none", seed=seed, disable_tqdm=True)
    budget = budget_callback(budget_s, fit_schedule=tuned)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=processor,
                      data_collator=collate_fn, compute_metrics=make_compute_metrics(processor, id2label), callbacks=[budget])
    for cb in (PrinterCallback, ProgressCallback): trainer.remove_callback(cb)
    desc = (f"transformers.Trainer, lr {lr:g}, cosine fitted to the budget ({budget_s / 60:g} min)" if tuned else
            f"transformers.Trainer as the guide, lr {GUIDE_LR:g}, cosine over {epochs} epochs")
    print(f"{name}: {desc}", flush=True)
    quiet = _DropRecords("There were missing keys in the checkpoint", "There were unexpected keys in the checkpoint")
    tlog = logging.getLogger("transformers.trainer"); tlog.addFilter(quiet)
    try: trainer.train()
    finally: tlog.removeFilter(quiet)
    # transformers 5.24's `load_best_model_at_end` loads the checkpoint's state dict without the key renaming that
    # `save_pretrained` reverted (RT-DETR's encoder/decoder keys; transformers#48805): it keeps the last epoch's weights
    # for those layers and warns of missing/unexpected keys. Load the best checkpoint as `from_pretrained` does instead.
    if trainer.state.best_model_checkpoint:
        trainer.model.load_state_dict(RTDetrForObjectDetection.from_pretrained(trainer.state.best_model_checkpoint).state_dict())
        print(f"{name}: best checkpoint {trainer.state.best_model_checkpoint} (eval_map {trainer.state.best_metric})", flush=True)
    test = trainer.evaluate(eval_dataset=test_ds, metric_key_prefix="test")  # the guide's last step
    wall = time.time() - t0
    print(f"{name}: {trainer.state.global_step} steps, {trainer.state.epoch:.2f} epochs, best eval_map "
          f"{trainer.state.best_metric}, test mAP@50 {test['test_map_50']:.4f}, wall {wall:.0f} s", flush=True)
    return {"variant": name, "desc": desc, "wall_s": wall, "steps": trainer.state.global_step,
            "epochs": float(trainer.state.epoch), "test_map_50": test["test_map_50"]}, trainer.model, processor, cat_ids

def predict_hf(model, processor, eval_set, cat_ids, batch_size=8):
    "COCO results of the Trainer's model: the guide's preprocessing (no augmentation) and `post_process_object_detection`."
    import numpy as np, torch
    from PIL import Image
    data = json.loads(Path(eval_set.splits["test"].annotations).read_text())
    folder, results = Path(eval_set.splits["test"].images), []
    model.eval()
    for i in range(0, len(data["images"]), batch_size):
        ims = data["images"][i:i + batch_size]
        images = [np.array(Image.open(folder / im["file_name"]).convert("RGB")) for im in ims]
        with torch.no_grad(): out = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
        # threshold 0: every one of the processor's top-k (k = num_queries) detections, in original-image px (xyxy).
        # The images are square and already of the input size, so the padding adds nothing to map back.
        posts = processor.post_process_object_detection(out, threshold=0.0, target_sizes=[(im["height"], im["width"]) for im in ims])
        for im, p in zip(ims, posts):
            for (x0, y0, x1, y1), s, l in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
                results.append({"image_id": im["id"], "category_id": cat_ids[int(l)], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
    return results

# -------------------------------------------------------------------------------------------------------- scoring
def coco_map(annotations, results):
    "pycocotools COCOeval (bbox) of COCO results against the ground truth file: (mAP@50, mAP)."
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if not results: return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotations); dt = gt.loadRes(results)
        e = COCOeval(gt, dt, "bbox"); e.evaluate(); e.accumulate(); e.summarize()
    return float(e.stats[1]), float(e.stats[0])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["ours", "hf"], help="run one side only")
    ap.add_argument("--budget-min", type=float, help="wall-clock budget of both trainings, minutes (default: the preset's training.max_time)")
    ap.add_argument("--hf-lr", type=float, help=f"run the tuned Trainer variant with this learning rate and a cosine fitted to the budget "
                                                f"(default: the guide's, lr {GUIDE_LR:g}, cosine over {GUIDE_EPOCHS} epochs)")
    ap.add_argument("--hf-epochs", type=int, default=GUIDE_EPOCHS, help="the Trainer's num_train_epochs (the guide's 30; the budget stops it earlier)")
    ap.add_argument("--workdir", type=Path, help="work folder (data, runs, results.json); reused when given. Default: a new temporary one")
    ap.add_argument("--seed", type=int, help="training seed of both (default: the preset's training.seed)")
    ap.add_argument("--eval-images", type=int, default=1000, help="fresh shapes images (seed 7) both models are scored on")
    args = ap.parse_args()
    ensure_accelerate()
    from databricks_cv.config import duration_seconds
    cfg = preset()
    seed = cfg.training.seed if args.seed is None else args.seed
    budget_min = args.budget_min if args.budget_min is not None else duration_seconds(cfg.training.max_time) / 60
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-vshf-"))
    work = work.resolve(); work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}; budget {budget_min:g} min; seed {seed}; scored on {args.eval_images} fresh shapes images", flush=True)
    data, eval_set = make_data(work), make_eval_set(work, args.eval_images)
    gt = eval_set.splits["test"].annotations
    k = int(cfg.model.hf_config.get("num_queries", 300))  # the RT-DETR processor keeps the top num_queries: ours gets the same k
    store = work / "results.json"
    rows = json.loads(store.read_text()) if store.is_file() else []
    new = []
    if args.only in (None, "ours"):
        r = run_ours(work, args.budget_min, seed)
        t = time.time(); r["map_50"], r["map"] = coco_map(gt, predict_ours(r["checkpoint"], eval_set, k))
        print(f"ours scored in {time.time() - t:.0f} s", flush=True); new.append(r)
    if args.only in (None, "hf"):
        r, model, processor, cat_ids = run_hf(work, data, budget_min * 60, seed, args.hf_lr, args.hf_epochs)
        t = time.time(); r["map_50"], r["map"] = coco_map(gt, predict_hf(model, processor, eval_set, cat_ids))
        print(f"{r['variant']} scored in {time.time() - t:.0f} s", flush=True); new.append(r)
    for r in new: r.update(seed=seed, budget_min=budget_min, eval_images=args.eval_images, when=time.strftime("%Y-%m-%d %H:%M:%S"))
    rows = [r for r in rows if (r["seed"], r["eval_images"], r["budget_min"]) == (seed, args.eval_images, budget_min)] + new
    store.write_text(json.dumps(rows, indent=1))
    print(f"\n{'variant':<22}{'steps':>7}{'epochs':>8}{'wall s':>8}{'mAP@50':>9}{'mAP':>8}   (COCOeval on {args.eval_images} fresh shapes images, seed 7)")
    for r in rows:
        mark = "" if r in new else "  (earlier run in this folder)"
        print(f"{r['variant']:<22}{r['steps']:>7}{r['epochs']:>8.1f}{r['wall_s']:>8.0f}{r['map_50']:>9.4f}{r['map']:>8.4f}"
              f"   budget {r['budget_min']:g} min{mark}")
    ours = next((r for r in reversed(rows) if r["variant"] == "ours"), None)
    for r in rows:
        if ours and r["variant"] != "ours":
            ratio = ours["map_50"] / r["map_50"] if r["map_50"] > 0 else float("inf")
            print(f"ratio of mAP@50, ours / {r['variant']}: {ratio:.3f} (goal >= 1.05)")
    print("variants:", "; ".join(f"{r['variant']} = {r['desc']}" for r in rows))

if __name__ == "__main__":
    main()
