"""The main job, measured: `databricks-cv train` (quickstart preset) against a plain PyTorch loop on the same
model, data and wall-clock budget, in one run of this script.

    python bench/quickstart.py               # both, ~20 min on 2 cores
    python bench/quickstart.py --only ours   # just the command
    python bench/quickstart.py --only ours --seed 1 --preset quickstart_rt_detr   # another model (its first), same data

Prints wall time (goal: <= 600 s including data generation and test evaluation) and test mAP@50 (goal >= 0.80),
and the ratio of our test mAP@50 to the plain loop's after the same wall time. Record results in bench/RESULTS.md.

The quickstart's test split has 64 images, so its mAP@50 moves by several hundredths from one training run to the
next; the script also evaluates the best checkpoint on an independent 1000-image shapes set (seed 7, made once under
the work folder), which is the number to compare settings by (`--no-big-eval` skips it, ~40 s).
"""
import argparse, json, os, re, subprocess, sys, tempfile, time
from pathlib import Path

def metrics_rows(text):
    "The rows of the metrics table `databricks-cv` prints: name -> [value per column]."
    return {m.group(1): [float(x) for x in m.group(2).split()] for m in re.finditer(r"^(\w+)[ \t]+([-\d. \t]+)$", text, re.M)}

def run_ours(workdir, seed=None, overrides=(), preset="quickstart"):
    t0 = time.time()
    extra = ([] if seed is None else [f"training.seed={seed}"]) + list(overrides)
    r = subprocess.run(["databricks-cv", "train", preset, f"training.output_dir={workdir}/runs",
                        f"data.shapes.path={workdir}/runs/shapes", *extra], capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode: sys.exit(f"databricks-cv train failed:\n{r.stderr[-3000:]}")
    table = metrics_rows(r.stdout)
    print(r.stdout[-1500:])
    best = re.search(r"^best checkpoint: (.+)$", r.stdout, re.M).group(1)
    return wall, table, best

def big_eval(workdir, checkpoint, n=1000, seed=7):
    "mAP@50 and mAP of `checkpoint` on an independent shapes set of `n` images (all in the test split)."
    r = subprocess.run(["databricks-cv", "evaluate", "quickstart", "--checkpoint", checkpoint, "--split", "test",
                        f"data.shapes.path={workdir}/big-eval", f"data.shapes.n_images={n}", f"data.shapes.seed={seed}",
                        "data.shapes.split_fractions=[0.0, 0.0, 1.0]"], capture_output=True, text=True)
    if r.returncode: sys.exit(f"databricks-cv evaluate failed:\n{r.stderr[-3000:]}")
    table = metrics_rows(r.stdout)
    return table["map_50"][-1], table["map"][-1]

def run_plain(workdir, budget_s, big=True, seed=None):
    """A plain PyTorch loop: same model config, same data pipeline, AdamW, no schedule, for `budget_s` seconds; (wall, test
    mAP@50, test mAP, (mAP@50, mAP) on the 1000 fresh images or None, optimiser steps)."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision
    from databricks_cv.config import load_config
    from databricks_cv.adapters import get_adapter, build_hf_model
    from databricks_cv.data import DetectionDataModule
    t0 = time.time()
    cfg = load_config("quickstart", [f"data.shapes.path={workdir}/runs/shapes"])
    torch.manual_seed(cfg.training.seed if seed is None else seed)
    adapter = get_adapter(cfg.model.model_type)
    dm = DetectionDataModule(cfg.data, adapter=adapter); dm.prepare_data(); dm.setup("fit"); dm.setup("test")
    model = build_hf_model(cfg.model, dm.id2label)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.training.learning_rate, weight_decay=cfg.training.weight_decay)
    eval_s, n_steps = 30, 0  # keep time for the test evaluation
    while time.time() - t0 < budget_s - eval_s:
        for b in dm.train_dataloader():
            model.train()
            loss = model(pixel_values=b["pixel_values"], pixel_mask=b["pixel_mask"], labels=b["labels"]).loss
            opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); n_steps += 1
            if time.time() - t0 > budget_s - eval_s: break
    model.eval()
    def score(datamodule):
        metric = MeanAveragePrecision(box_format="xyxy")
        with torch.no_grad():
            for b in datamodule.test_dataloader():
                out = model(pixel_values=b["pixel_values"], pixel_mask=b["pixel_mask"])
                metric.update(adapter.format_predictions(out, b["meta"]), adapter.format_targets(b["targets"], b["meta"]))
        res = metric.compute()
        return float(res["map_50"]), float(res["map"])
    test, wall = score(dm), time.time() - t0
    if not big: return wall, *test, None, n_steps
    # the same 1000 fresh images as `big_eval` (made here if our run has not made them), after the wall time is taken
    big_cfg = load_config("quickstart", [f"data.shapes.path={workdir}/big-eval", "data.shapes.n_images=1000", "data.shapes.seed=7",
                                         "data.shapes.split_fractions=[0.0, 0.0, 1.0]"])
    big_dm = DetectionDataModule(big_cfg.data, adapter=adapter); big_dm.prepare_data(); big_dm.setup("test")
    return wall, *test, score(big_dm), n_steps

if __name__ == "__main__":
    ap = argparse.ArgumentParser(); ap.add_argument("--only", choices=["ours", "plain"])
    ap.add_argument("--no-big-eval", action="store_true", help="skip the 1000-image independent evaluation")
    ap.add_argument("--seed", type=int, help="training.seed (the data stay the same); default: the preset's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for our run, e.g. --set data.batch_size=8 (repeatable)")
    ap.add_argument("--preset", default="quickstart", help="our run's preset or YAML file (its data must be the quickstart's "
                    "shapes set: the big evaluation reads the quickstart preset's data settings); default: quickstart")
    args = ap.parse_args()
    print(f"threads: {os.environ.get('OMP_NUM_THREADS', 'default')}, seed: {args.seed if args.seed is not None else 'preset'}"
          + (f", overrides: {' '.join(args.set)}" if args.set else "") + f", preset: {args.preset}")
    work = Path(tempfile.mkdtemp(prefix="bench-quickstart-"))
    ours = plain = None
    if args.only in (None, "ours"):
        wall, table, best = run_ours(work, args.seed, args.set, args.preset)
        ours = (wall, table.get("map_50", [None, None])[-1])
        steps = json.loads((Path(best).parent.parent / "run.json").read_text()).get("global_step")
        import yaml
        per_epoch = 512 // yaml.safe_load((Path(best).parent.parent / "config.yaml").read_text())["data"]["batch_size"]  # 512 training images
        print(f"ours:  wall {wall:.0f} s (goal <= 600 s), {steps} steps ({steps / per_epoch:.1f} epochs of {per_epoch} steps), "
              f"test mAP@50 {ours[1]} (goal >= 0.80)")
        if not args.no_big_eval:
            m50, m = big_eval(work, best)
            print(f"ours, best checkpoint on 1000 independent shapes images: mAP@50 {m50:.4f}, mAP {m:.4f}")
    if args.only in (None, "plain"):
        budget = ours[0] if ours else 600
        plain = run_plain(work, budget, big=not args.no_big_eval, seed=args.seed)
        print(f"plain: wall {plain[0]:.0f} s, {plain[4]} steps, test mAP@50 {plain[1]:.4f}, mAP {plain[2]:.4f}")
        if plain[3]: print(f"plain, its last weights on 1000 independent shapes images (torchmetrics): mAP@50 {plain[3][0]:.4f}, "
                           f"mAP {plain[3][1]:.4f}")
    if ours and plain and plain[1] > 0:
        print(f"ratio of test mAP@50, ours / plain loop, same wall time: {ours[1] / plain[1]:.3f}")
