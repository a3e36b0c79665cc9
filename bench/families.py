"""Every family's tiny preset trained from scratch on the same shapes data for the same wall-clock budget: parameters,
optimiser steps, steps/s and mAP on a common held-out set, as one markdown table.

    python bench/families.py                              # all 12 families, 90 s each, ~25 min on 2 cores
    python bench/families.py --families detr,rt_detr --budget-s 20 --threads 1

Each family runs `UnifiedTrainer` (the library's training, as `databricks-cv train` does) in its own subprocess, one
after the other, so a family that fails prints its error in its row instead of stopping the others.

What every family gets, whatever its preset says (the overrides applied to each `<family>_tiny` preset):
- data: one shapes set made once under the work folder (640 images of 128 px, seed 0, the quickstart's), as explicit
  splits: its train split (512 images) to train on, its val split (64) to validate after each epoch, and a separate
  held-out shapes set (300 images, seed 7, all in its test split) to test the best checkpoint on
  (`data.shapes=null`, `data.train/val/test`); `data.image_size=128`, `data.batch_size=4`, `data.eval_batch_size=8`.
- budget: `training.max_time=<budget-s / 60>` (minutes) with `training.max_epochs=1000`, so the library's `TimeBudget`
  fits whole epochs (128 steps each) to the budget, then part of one with the time left (the table in
  RESULTS.md was made with whole epochs only), and lays the cosine schedule over them. It plans from the first
  epoch's time, so a family always trains at least one epoch: a slow family can overrun a small budget (see "train s").
- `tracking.enabled=false`, `training.report=false`, `training.accelerator=cpu`, `training.devices=1`.
Everything else (model size, learning rate 1e-3 with no warm-up, gradient clip 1.0, default augmentation) is the preset's.

Columns: parameters of the built model; epochs and optimiser steps trained; steps/s = steps / (fit wall time minus all
validation, the sanity check included); train s = that training time; val mAP@50 of the last epoch (64 images); mAP@50
and mAP of the best checkpoint (by val mAP) on the 300 held-out images. The total wall time includes data generation,
start-up of each subprocess and the test evaluations. Run it on an idle machine: families run one after the other, each
with `--threads` threads.
"""
import argparse, json, os, subprocess, sys, tempfile, time, traceback
from pathlib import Path

HELD_OUT = dict(n_images=300, seed=7)  # the common test set: 128 px, all in its test split

def worker(family, workdir, budget_s, threads, out_json):
    "Runs in the subprocess of one family: train within the budget, test the best checkpoint, write `out_json`."
    import torch
    torch.set_num_threads(threads)
    import pytorch_lightning as pl
    from databricks_cv.config import load_config
    from databricks_cv.trainer import UnifiedTrainer

    class Meter(pl.Callback):
        "Wall time of `fit` and of every validation (the sanity check included)."
        val_s = 0.0
        def on_fit_start(self, trainer, module): self.t0 = time.perf_counter()
        def on_fit_end(self, trainer, module): self.fit_s = time.perf_counter() - self.t0
        def on_validation_start(self, trainer, module): self.v0 = time.perf_counter()
        def on_validation_end(self, trainer, module): self.val_s += time.perf_counter() - self.v0

    meter = Meter()
    original = UnifiedTrainer._init_callbacks
    UnifiedTrainer._init_callbacks = lambda self: original(self) + [meter]
    shapes, held = Path(workdir, "shapes"), Path(workdir, "held-out")
    split = lambda root, s: f"{{images: {root}/images/{s}, annotations: {root}/annotations/{s}.json}}"
    overrides = ["data.shapes=null", f"data.train={split(shapes, 'train')}", f"data.val={split(shapes, 'val')}",
                 f"data.test={split(held, 'test')}", "data.image_size=128", "data.batch_size=4", "data.eval_batch_size=8",
                 f"training.max_time={budget_s / 60:.6g}", "training.max_epochs=1000", "training.accelerator=cpu",
                 "training.devices=1", f"training.output_dir={workdir}/runs/{family}", "training.report=false",
                 "tracking.enabled=false"]
    cfg = load_config(f"{family}_tiny", overrides)
    ut = UnifiedTrainer(cfg)
    res = ut.train()
    train_s = meter.fit_s - meter.val_s
    t = time.perf_counter(); test = ut.test(split="test"); test_s = time.perf_counter() - t
    Path(out_json).write_text(json.dumps({
        "family": family, "parameters": sum(p.numel() for p in ut.model.parameters()), "steps": res.global_step,
        "epochs": ut.trainer.current_epoch, "fit_s": meter.fit_s, "val_s": meter.val_s, "train_s": train_s,
        "steps_per_s": res.global_step / train_s if train_s > 0 else None, "val_map_50": res.metrics.get("val/map_50"),
        "test_map_50": test.get("test/map_50"), "test_map": test.get("test/map"), "test_s": test_s}))

def run_family(family, workdir, budget_s, threads, timeout_s):
    "One family in a subprocess; its result, or its error as the last line of what it printed."
    out = Path(workdir, f"{family}.json"); out.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    log = Path(workdir, f"{family}.log")
    t = time.time()
    try:
        with open(log, "w") as f:
            r = subprocess.run([sys.executable, __file__, "--worker", family, "--workdir", str(workdir), "--budget-s",
                                str(budget_s), "--threads", str(threads), "--out", str(out)], env=env, stdout=f,
                               stderr=subprocess.STDOUT, timeout=timeout_s)
        rc = r.returncode
    except subprocess.TimeoutExpired: rc = f"timed out after {timeout_s} s"
    wall = time.time() - t
    if rc == 0 and out.is_file(): return {**json.loads(out.read_text()), "wall_s": wall}
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    return {"family": family, "error": (lines or [f"exit {rc}"])[-1][:200], "rc": rc, "wall_s": wall, "log": str(log)}

def fmt(x, spec): return "-" if x is None else format(x, spec)

def table(rows):
    out = ["| family | parameters | epochs | steps | steps/s | train s | val mAP@50 (last epoch) | held-out mAP@50 | held-out mAP |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['family']} | failed (exit {r['rc']}): {r['error'].replace('|', '/')} | | | | | | | |")
            continue
        out.append(f"| {r['family']} | {r['parameters']:,} | {r['epochs']} | {r['steps']} | {fmt(r['steps_per_s'], '.2f')} | "
                   f"{r['train_s']:.0f} | {fmt(r['val_map_50'], '.3f')} | {fmt(r['test_map_50'], '.3f')} | {fmt(r['test_map'], '.3f')} |")
    return "\n".join(out)

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", help="comma-separated, e.g. detr,rt_detr (default: every *_tiny preset)")
    p.add_argument("--budget-s", type=float, default=90, help="wall-clock training budget per family, seconds (default 90)")
    p.add_argument("--workdir", help="data, runs and logs go here (default: a new temporary folder)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of each family's process (default: all cores)")
    p.add_argument("--worker"); p.add_argument("--out")
    a = p.parse_args()
    if a.worker:
        try: worker(a.worker, a.workdir, a.budget_s, a.threads, a.out)
        except Exception:
            traceback.print_exc(); sys.exit(1)
        sys.exit(0)
    from databricks_cv.config import list_presets
    from databricks_cv.datasets import make_shapes_dataset
    known = [n[:-len("_tiny")] for n in list_presets() if n.endswith("_tiny")]
    families = a.families.split(",") if a.families else known
    if unknown := [f for f in families if f not in known]: sys.exit(f"no tiny preset for {unknown}; families: {', '.join(known)}")
    t0 = time.time()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-families-")); work.mkdir(parents=True, exist_ok=True)
    make_shapes_dataset(work / "shapes", n_images=640, image_size=128, seed=0, progress=False)
    make_shapes_dataset(work / "held-out", image_size=128, split_fractions=(0.0, 0.0, 1.0), progress=False, **HELD_OUT)
    print(f"work folder {work}; data made in {time.time() - t0:.0f} s; budget {a.budget_s:g} s per family, "
          f"{a.threads} thread(s) each; families: {', '.join(families)}", flush=True)
    rows = []
    for fam in families:
        r = run_family(fam, work, a.budget_s, a.threads, timeout_s=int(3 * a.budget_s + 600))
        rows.append(r)
        print(f"{fam}: " + (f"failed: {r['error']} (log: {r['log']})" if "error" in r else
              f"{r['steps']} steps in {r['train_s']:.0f} s of training ({r['epochs']} epochs), held-out mAP@50 "
              f"{fmt(r['test_map_50'], '.3f')}, process wall {r['wall_s']:.0f} s"), flush=True)
    print()
    print(table(rows))
    print(f"\ntotal wall time: {time.time() - t0:.0f} s for {len(families)} families (budget {a.budget_s:g} s each)")
