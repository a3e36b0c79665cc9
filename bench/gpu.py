"""One GPU, one prepared script: a DETR-R50-size and an RT-DETR-R50-size model built from config (random init, nothing
downloaded), trained by `UnifiedTrainer` and by a bare PyTorch loop on the same batches, in fp32 and bf16-mixed:
images/s, peak GPU memory, evaluation images/s, and the time of the library's metric on 5000 images.

    python bench/gpu.py              # on the GPU machine, ~3-5 min on one H200 (at most ~8)
    python bench/gpu.py --dry-run    # the same code paths on CPU, tiny models, 128 px, 3 steps (~1-2 min on 2 cores)
    python bench/gpu.py --models rt_detr_r50 --precisions bf16-mixed --steps 50

Models (`model.hf_config` dicts, built by the library as the presets are: `AutoConfig.for_model` + `from_config`):
- detr_r50: DETR with a Hugging Face ResNet-50 backbone (embedding 64, hidden sizes 256/512/1024/2048, depths 3/4/6/3,
  bottleneck, last stage only), d_model 256, 6+6 layers, FFN 2048, 8 heads, 100 queries (facebook/detr-resnet-50's
  shape); inputs 800x800 px.
- rt_detr_r50: RT-DETR with an `rt_detr_resnet` ResNet-50 backbone (stages 2-4), encoder 256 wide, 6 decoder layers,
  300 queries, 100 denoising queries (PekingU/rtdetr_r50vd's shape); inputs 640x640 px.
In transformers 5.x DETR has no `use_timm_backbone`/`use_pretrained_backbone`: with a `backbone_config` it builds the
HF ResNet from config, randomly initialised. `HF_HUB_OFFLINE=1` is set so nothing can be fetched.

Data: a small synthetic shapes set (128 px images, 3 classes, made under the work folder in a second) read by the
library's `DetectionDataModule` with `data.image_size` = the model's input size (images upscaled, default augmentation,
`--batch` images a batch). Its first 8 training batches are collated once and cached on the CPU; both paths cycle
through the same cached batches and move each to the device per step, so neither pays for decoding or augmentation.
- ours: `UnifiedTrainer(config, datamodule=<cached batches>).train()`: the library's DetectionModel, AdamW with its
  parameter groups, warm-up/cosine schedule, gradient clip 0.1, Lightning precision `32` or `bf16-mixed`, progress bar,
  logging every 10 steps, then its validation and checkpoints (after the timed steps).
- bare: `build_hf_model` (the same network), `torch.optim.AdamW(fused=True)`, `torch.autocast(bfloat16)` for bf16,
  `clip_grad_norm_(0.1)`, nothing else.
images/s: training images between the end of step `--warmup` and the end of step `--warmup + --steps` (CUDA
synchronised). Peak memory: `torch.cuda.max_memory_allocated` over that path (reset before each path).
Evaluation: the library's validation work per batch (forward with labels, `adapter.format_predictions`, metric
`update`) on the cached batches, as images/s; then `make_map_metric` update + compute on `--eval-images` (5000)
images of synthetic predictions (100 a image, 80 classes, bench/eval.py's generator) with the metric on the device.
"Evaluation of 5000 images" = 5000 / that images/s + the metric's time. Results print as they come (flushed), so a run
that is cut short still shows what it measured; a path that fails prints its error and the rest go on.
"""
import argparse, gc, os, resource, shutil, sys, tempfile, time, traceback
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
from pathlib import Path

def say(*a): print(*a, flush=True)

R50 = dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck")
MODELS = {
    "detr_r50": dict(model_type="detr", image_size=800, hf_config=dict(
        backbone_config=dict(model_type="resnet", **R50, out_features=["stage4"]),
        d_model=256, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        encoder_attention_heads=8, decoder_attention_heads=8, num_queries=100)),
    "rt_detr_r50": dict(model_type="rt_detr", image_size=640, hf_config=dict(
        backbone_config=dict(model_type="rt_detr_resnet", **R50, out_features=["stage2", "stage3", "stage4"],
                             downsample_in_bottleneck=False),
        encoder_in_channels=[512, 1024, 2048], feat_strides=[8, 16, 32], encoder_hidden_dim=256, encoder_layers=1,
        encoder_ffn_dim=1024, encoder_attention_heads=8, hidden_expansion=1.0, d_model=256,
        decoder_in_channels=[256, 256, 256], decoder_ffn_dim=1024, decoder_layers=6, decoder_attention_heads=8,
        decoder_n_points=4, num_queries=300, num_denoising=100)),
}
TINY = {"detr_r50": "detr_tiny", "rt_detr_r50": "rt_detr_tiny"}  # --dry-run: the tiny presets' networks instead

def identity(x): return x

def to_device(x, device):
    "Tensors in nested dicts/lists moved to `device` (what Lightning's batch transfer does)."
    import torch
    if isinstance(x, torch.Tensor): return x.to(device, non_blocking=True)
    if isinstance(x, dict): return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)): return type(x)(to_device(v, device) for v in x)
    return x

class Clock:
    "Wall clock and peak memory of the device (GPU) or of the process (CPU: ru_maxrss, which never goes down)."
    def __init__(self, device): self.device = device
    def sync(self):
        import torch
        if self.device.type == "cuda": torch.cuda.synchronize()
    def now(self): self.sync(); return time.perf_counter()
    def reset_peak(self):
        import torch
        if self.device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    def peak_gib(self):
        import torch
        if self.device.type == "cuda": return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB

def model_config(name, dry_run, image_size, batch, shapes_path):
    "The run's `Config` (the same network for both paths)."
    from databricks_cv.config import load_config
    spec = MODELS[name]
    hf = load_config(TINY[name]).model.hf_config if dry_run else spec["hf_config"]
    cfg = load_config(None, [f"model.model_type={spec['model_type']}", f"data.shapes.path={shapes_path}",
                             "data.shapes.n_images=80", "data.shapes.image_size=128", f"data.image_size={image_size}",
                             f"data.batch_size={batch}", f"data.eval_batch_size={batch}", "tracking.enabled=false",
                             "training.report=false", "training.early_stopping_patience=null"])
    cfg.model.hf_config = hf
    return cfg

def cached_batches(cfg, n_train=8, n_val=2):
    "The library's batches (train: augmented; val), collated once, kept on the CPU; and the data module's classes."
    from databricks_cv.adapters import get_adapter
    from databricks_cv.data import DetectionDataModule
    dm = DetectionDataModule(cfg.data, adapter=get_adapter(cfg.model.model_type)); dm.prepare_data(); dm.setup("fit")
    train = [b for _, b in zip(range(n_train), dm.train_dataloader())]
    val = [b for _, b in zip(range(n_val), dm.val_dataloader())]
    return train, val, dm

def run_bare(cfg, dm, train, val, warmup, steps, device, clock):
    "A bare loop: the same network, AdamW (fused), autocast for bf16, clip 0.1. Then the library's eval work per batch."
    import torch
    from databricks_cv.adapters import build_hf_model, get_adapter
    from databricks_cv.model import make_map_metric
    torch.manual_seed(0)
    clock.reset_peak()
    model = build_hf_model(cfg.model, dm.id2label).to(device)
    adapter = get_adapter(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=True)
    bf16 = cfg.training.precision == "bf16-mixed"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train()
    for i in range(warmup + steps):
        if i == warmup: t0 = clock.now()
        b = to_device(train[i % len(train)], device)
        with autocast():
            kw = {"pixel_mask": b["pixel_mask"]} if adapter.uses_pixel_mask else {}
            loss = model(pixel_values=b["pixel_values"], labels=b["labels"], **kw).loss
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1); opt.step()
    seconds = clock.now() - t0
    images = steps * len(train[0]["pixel_values"])
    peak = clock.peak_gib()
    # evaluation, as DetectionModel.validation_step does it: forward with labels (the val loss), predictions, metric update
    model.eval(); metric = make_map_metric(cfg.training).to(device)
    n_eval = max(4, len(val))
    with torch.no_grad():
        for i in range(n_eval + 1):
            if i == 1: e0, e_images = clock.now(), 0  # the first batch warms up
            b = to_device(val[i % len(val)], device)
            with autocast():
                kw = {"pixel_mask": b["pixel_mask"]} if adapter.uses_pixel_mask else {}
                out = model(pixel_values=b["pixel_values"], labels=b["labels"], **kw)
            metric.update(adapter.format_predictions(out, b["meta"], cfg.training.max_detections),
                          adapter.format_targets(b["targets"], b["meta"]))
            if i >= 1: e_images += len(b["pixel_values"])
        eval_ips = e_images / (clock.now() - e0)
    n_params = sum(p.numel() for p in model.parameters())
    del model, opt, metric
    return {"images_per_s": images / seconds, "peak_gib": peak, "eval_images_per_s": eval_ips, "parameters": n_params,
            "optimizer": "AdamW fused"}

def run_ours(cfg, dm, train, val, warmup, steps, device, clock, workdir):
    "`UnifiedTrainer.train()` on the cached batches: `max_steps = warmup + steps`, timed by a callback."
    import torch
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader
    from databricks_cv.data import DetectionDataModule
    from databricks_cv.trainer import UnifiedTrainer
    total = warmup + steps

    class Cached(DetectionDataModule):
        "The library's data module for this config, serving the cached batches (cycled) instead of its loaders."
        def train_dataloader(self): return DataLoader([train[i % len(train)] for i in range(total)], batch_size=None, collate_fn=identity)
        def val_dataloader(self): return DataLoader(val, batch_size=None, collate_fn=identity)

    class Meter(pl.Callback):
        def on_train_start(self, trainer, module): clock.reset_peak()
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == warmup: self.t0 = clock.now()
            if trainer.global_step == total: self.seconds, self.peak = clock.now() - self.t0, clock.peak_gib()

    meter = Meter()
    cfg.training.max_steps, cfg.training.max_epochs, cfg.training.max_time = total, 1, None
    cfg.training.accelerator, cfg.training.devices = ("gpu" if device.type == "cuda" else "cpu"), 1
    cfg.training.output_dir = str(workdir / "runs")
    data = Cached(cfg.data, adapter=dm.adapter)
    ut = UnifiedTrainer(cfg, datamodule=data)
    original = ut._init_callbacks
    ut._init_callbacks = lambda: original() + [meter]
    clock.reset_peak()
    res = ut.train()
    opt = ut.trainer.optimizers[0]
    fused = bool(opt.defaults.get("fused"))
    out = {"images_per_s": steps * len(train[0]["pixel_values"]) / meter.seconds, "peak_gib": meter.peak,
           "optimizer": f"AdamW {'fused' if fused else 'foreach/for-loop'}", "steps": res.global_step}
    shutil.rmtree(res.run_dir, ignore_errors=True)  # R50 checkpoints with optimiser state: ~0.5 GB each
    del ut, data, res, opt
    return out

def metric_time(n_images, device, classes=80, dets=100):
    "make_map_metric update + compute on `n_images` of synthetic predictions (bench/eval.py's generator)."
    import torch
    sys.path.insert(0, str(Path(__file__).parent))
    from eval import synthetic  # bench/eval.py
    from databricks_cv.config import TrainingConfig
    from databricks_cv.model import make_map_metric
    preds, tgts = synthetic(n_images, dets, classes)
    preds, tgts = to_device(preds, device), to_device(tgts, device)
    metric = make_map_metric(TrainingConfig()).to(device)
    t = time.perf_counter(); metric.update(preds, tgts); t_update = time.perf_counter() - t
    t = time.perf_counter(); res = metric.compute(); t_compute = time.perf_counter() - t
    return t_update, t_compute, float(res["map"])

def cleanup(device):
    import torch
    gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 128 px, batch 2, 1+2 steps, 200 eval images")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated of {', '.join(MODELS)}")
    p.add_argument("--precisions", default="32,bf16-mixed", help="comma-separated of 32, bf16-mixed")
    p.add_argument("--steps", type=int, help="timed steps per path (default 30; dry run 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5; dry run 1)")
    p.add_argument("--batch", type=int, help="images a batch (default 8; dry run 2)")
    p.add_argument("--eval-images", type=int, help="images for the metric timing (default 5000; dry run 200)")
    p.add_argument("--workdir", help="shapes data and run folders (default: a new temporary folder)")
    a = p.parse_args()
    if bad := [m for m in a.models.split(",") if m not in MODELS]: sys.exit(f"unknown models {bad}; choose from {', '.join(MODELS)}")
    if bad := [x for x in a.precisions.split(",") if x not in ("32", "bf16-mixed")]: sys.exit(f"unknown precisions {bad}: 32, bf16-mixed")
    dry = a.dry_run
    steps, warmup = a.steps or (2 if dry else 30), a.warmup or (1 if dry else 5)
    batch, eval_images = a.batch or (2 if dry else 8), a.eval_images or (200 if dry else 5000)
    t_start = time.time()
    import torch, transformers, pytorch_lightning, torchmetrics, databricks_cv
    from databricks_cv.trainer import quiet_library_noise
    quiet_library_noise()
    cuda = torch.cuda.is_available() and not dry
    if not cuda and not dry: sys.exit("no CUDA device: run with --dry-run to check the code paths on CPU")
    device = torch.device("cuda" if cuda else "cpu")
    card = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, dry run)"
    clock = Clock(device)
    say(f"device: {card}")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        say(f"  {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, driver-visible devices {torch.cuda.device_count()}")
    say(f"torch {torch.__version__}, transformers {transformers.__version__}, pytorch-lightning {pytorch_lightning.__version__}, "
        f"torchmetrics {torchmetrics.__version__}, databricks-cv {databricks_cv.__version__}, python {sys.version.split()[0]}")
    say(f"float32 matmul precision: {torch.get_float32_matmul_precision()} (fp32 runs use no TF32 unless that says so)")
    say(f"steps: {warmup} warm-up + {steps} timed per path, batch {batch}; metric timing on {eval_images} images")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-gpu-")); work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.models.split(","):
        size = 128 if dry else MODELS[name]["image_size"]
        try:
            cfg = model_config(name, dry, size, batch, work / "shapes")
            train, val, dm = cached_batches(cfg)
        except Exception as e:
            traceback.print_exc(); say(f"{name}: could not prepare ({type(e).__name__}: {e})"); continue
        say(f"\n{name}: {cfg.model.model_type}, input {tuple(train[0]['pixel_values'].shape[-2:])} px, batch {batch}, "
            f"{len(train)} cached training batches")
        for precision in a.precisions.split(","):
            for path in ("bare", "ours"):
                c = model_config(name, dry, size, batch, work / "shapes"); c.training.precision = precision
                try:
                    r = (run_bare(c, dm, train, val, warmup, steps, device, clock) if path == "bare"
                         else run_ours(c, dm, train, val, warmup, steps, device, clock, work))
                except Exception as e:
                    traceback.print_exc()
                    r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"}
                cleanup(device)
                rows.append({"model": name, "precision": precision, "path": path, **r})
                if "error" in r: say(f"  {precision:<10} {path:<4}: FAILED {r['error']}"); continue
                extra = (f", {r['parameters'] / 1e6:.1f} M parameters, eval (forward+loss+postprocess+metric update) "
                         f"{r['eval_images_per_s']:.1f} images/s" if path == "bare" else f", {r['steps']} steps")
                say(f"  {precision:<10} {path:<4}: {r['images_per_s']:.1f} images/s, peak memory {r['peak_gib']:.2f} GiB, "
                    f"{r['optimizer']}{extra}")
    say(f"\nmetric: make_map_metric on {eval_images} images x 100 detections, 80 classes, states on {device.type} ...")
    try:
        t_update, t_compute, m = metric_time(eval_images, device)
        say(f"  update {t_update:.2f} s + compute {t_compute:.2f} s = {t_update + t_compute:.2f} s (mAP {m:.4f})")
    except Exception as e:
        traceback.print_exc(); t_update = t_compute = None; say(f"  FAILED {type(e).__name__}: {e}")
    mem = "peak GPU memory (GiB)" if cuda else "peak RSS of the process so far (GiB)"
    say(f"\n## {card}\n")
    say(f"| model | precision | path | images/s (train) | ours / bare | {mem} | optimizer | eval of {eval_images} images (s) |")
    say("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r: say(f"| {r['model']} | {r['precision']} | {r['path']} | failed: {r['error'].replace('|', '/')} | | | | |"); continue
        bare = next((x for x in rows if x["model"] == r["model"] and x["precision"] == r["precision"] and x["path"] == "bare"
                     and "error" not in x), None)
        ratio = f"{r['images_per_s'] / bare['images_per_s']:.2f}" if bare and r["path"] == "ours" else ""
        fwd = eval_images / r["eval_images_per_s"] if r["path"] == "bare" else None
        ev = f"{fwd + t_update + t_compute:.1f} (forward {fwd:.1f} + metric {t_update + t_compute:.1f})" if fwd and t_update is not None else ""
        say(f"| {r['model']} | {r['precision']} | {r['path']} | {r['images_per_s']:.1f} | {ratio} | {r['peak_gib']:.2f} | "
            f"{r['optimizer']} | {ev} |")
    say(f"\ntotal wall time: {time.time() - t_start:.0f} s on {card}")
