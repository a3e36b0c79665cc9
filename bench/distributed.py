"""Throughput of Lightning DDP (2 processes x 1 thread) against one process x 2 threads for the quickstart's RT-DETR
(the `quickstart_rt_detr` preset, the model of the numbers in RESULTS.md) on CPU,
and the val mAP the 2-process run logged against a single-process evaluation of the same checkpoint.

    python bench/distributed.py [--steps 30] [--warmup 5]

Each path trains that preset for `--steps` optimiser steps (batch 4 per process) from the same seed;
images/s counts training images between the end of step `--warmup` and the end of the last step (start-up, data
generation and validation left out). Run it on an idle machine: the two paths share its cores one after the other.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

def worker(out_dir, steps, warmup, devices):
    "Runs in each process of one path (Lightning re-runs this script for rank 1)."
    import pytorch_lightning as pl
    from databricks_cv.config import load_config
    from databricks_cv.trainer import UnifiedTrainer

    class Throughput(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == warmup: self.t0, self.n0 = time.perf_counter(), trainer.global_step
            if trainer.global_step == steps: self.seconds = time.perf_counter() - self.t0

    meter = Throughput()
    original = UnifiedTrainer._init_callbacks
    UnifiedTrainer._init_callbacks = lambda self: original(self) + [meter]
    cfg = load_config("quickstart_rt_detr", [f"data.shapes.path={out_dir}/shapes", f"training.output_dir={out_dir}/runs",
                                     f"training.max_steps={steps}", "training.max_time=null", "training.accelerator=cpu",
                                     f"training.devices={devices}", "tracking.enabled=false"])
    res = UnifiedTrainer(cfg).train()
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        images = (steps - warmup) * cfg.data.batch_size * devices
        Path(out_dir, "result.json").write_text(json.dumps({
            "images_per_s": images / meter.seconds, "seconds": meter.seconds, "best": res.best_checkpoint,
            "val": {k: v for k, v in res.metrics.items() if k.startswith("val/")}}))

def run_path(root, steps, warmup, devices, threads):
    out = Path(root) / f"{devices}x{threads}"; out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, __file__, "--worker", str(out), "--steps", str(steps), "--warmup", str(warmup),
                    "--devices", str(devices)], env=env, check=True)
    return json.loads((out / "result.json").read_text())

def single_process_val(config_path, checkpoint):
    import torch
    import pytorch_lightning as pl
    from databricks_cv.config import load_config
    from databricks_cv.model import DetectionModel
    from databricks_cv.data import DetectionDataModule
    from databricks_cv.adapters import get_adapter
    cfg = load_config(config_path)
    dm = DetectionDataModule(cfg.data, adapter=get_adapter(cfg.model.model_type))
    model = DetectionModel.load_from_checkpoint(checkpoint, map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    torch.set_num_threads(1)  # as each DDP process: more threads sum in another order (1e-5 in mAP on a barely trained model)
    return trainer.validate(model, datamodule=dm, verbose=False)[0]

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30); p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--worker"); p.add_argument("--devices", type=int, default=1)
    a = p.parse_args()
    if a.worker: worker(a.worker, a.steps, a.warmup, a.devices); sys.exit(0)
    from databricks_cv.model import COCO_METRICS
    root = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    one = run_path(root, a.steps, a.warmup, devices=1, threads=2)
    two = run_path(root, a.steps, a.warmup, devices=2, threads=1)
    print(f"1 process x 2 threads: {one['images_per_s']:.1f} images/s")
    print(f"2 processes x 1 thread (Lightning DDP, gloo): {two['images_per_s']:.1f} images/s "
          f"({two['images_per_s'] / one['images_per_s']:.2f}x)")
    config_path = next((root / "2x1" / "runs").glob("*/config.yaml"))
    single = single_process_val(config_path, two["best"])
    diff = max(abs(two["val"][f"val/{k}"] - single[f"val/{k}"]) for k in COCO_METRICS)
    print(f"val mAP@50 logged by the 2-process run {two['val']['val/map_50']:.6f}, single-process evaluation of its "
          f"checkpoint {single['val/map_50']:.6f}; largest difference over the 12 COCO numbers {diff:.2e}")
