"""Re-run notebooks and check that their outputs match the committed ones (the docs show only what is committed).

    python .ci/outputs.py [--n_workers 2] [NOTEBOOK ...]     (default: every notebook with committed outputs)
    python .ci/outputs.py --write NOTEBOOK ...                (run and write the outputs to commit; then nbdev_clean)

`--write` is how the committed outputs are made, so that the check compares like with like (execnb's CaptureShell,
PNG figures at 1x, cells skipped as nbdev_test skips them keep what they had).

Cells run as `nbdev_test` runs them (same skip flags: `#| slow` cells are not run and keep their committed output).
What counts as the same output, and why:
- Text (stdout, `text/plain`, `text/markdown`, `text/html`): equal after removing ANSI colours and memory addresses,
  with every number compared as a number: integers exactly, decimals within 2% or 0.01 (whichever is larger). A
  notebook that trains a model for a few hundred steps gets slightly different floats on another CPU (other SIMD
  kernels, other summation order), and those grow over the steps; a wrong count, a wrong label, a different table
  layout or a metric that moved by more than noise is still caught.
- Images (`image/png`): the same number of images in the cell, each of the same pixel size. The PNG bytes differ
  between matplotlib / FreeType builds for the same figure, so the bytes are not compared.
- stderr is not compared: library warnings change with library versions. Committed notebooks should not show any.
A cell whose output appears or disappears is a difference. Exits 1 and lists the differences, if any.

Numbers are compared only on a CPU that runs the same torch kernels as the one that wrote the outputs
(`torch.backends.cpu.get_cpu_capability()`, kept in `.ci/outputs-cpu.txt` by `--write`): an AVX2 machine and an
AVX-512 one train the same notebook along different paths (a tutorial's 240 steps gave val mAP 0.050 against 0.084),
which no tolerance separates from a real change. On another CPU the text is still compared with every number masked
(the same cells, outputs, labels and image sizes; spacing ignored, as numpy pads by its numbers' widths), and the
script says that numbers were not compared.
`--write` records the CPU it ran on: the file's first line is the CPU most notebooks were written with, and a line
`nbs/<notebook>.ipynb <CPU>` follows for each notebook written on another one (its numbers are compared only there).
"""
import argparse, base64, json, math, os, re, struct, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUM = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
LOOSE_NUM = re.compile(r"-?\d+\.?\d*(?:[eE][-+]?\d+)?")  # also numpy's "-1." 
NOISE = [(re.compile(r"\x1b\[[0-9;]*m"), ""), (re.compile(r"0x[0-9a-fA-F]{6,}"), "0x…")]
TEXT_MIMES = ("text/plain", "text/markdown", "text/html")

def _text(v): return "".join(v) if isinstance(v, list) else str(v)

def _clean(s):
    for rx, rep in NOISE: s = rx.sub(rep, s)
    return s

CPU_FILE = ROOT / ".ci" / "outputs-cpu.txt"

def cpu_capability() -> str:
    "The vector instruction set torch's CPU kernels use here: AVX512, AVX2, ..."
    import torch
    return torch.backends.cpu.get_cpu_capability()

def _cpu_records() -> tuple:
    "(the default CPU, {notebook path relative to the root: its CPU}) from `.ci/outputs-cpu.txt`."
    lines = [l.split() for l in (CPU_FILE.read_text().splitlines() if CPU_FILE.is_file() else []) if l.strip()]
    if not lines: return "", {}
    return lines[0][0], {l[0]: l[1] for l in lines[1:] if len(l) >= 2 and l[0].endswith(".ipynb")}

def _rel(path) -> str: return Path(path).resolve().relative_to(ROOT).as_posix()

def written_on(path=None) -> str:
    "The CPU capability the committed outputs of `path` (default: most notebooks) were written with."
    default, per_nb = _cpu_records()
    return per_nb.get(_rel(path), default) if path is not None else default

def record_cpu(path):
    "Note that `path`'s outputs were just written on this CPU: the first line stays the default, other CPUs per notebook."
    here, (default, per_nb) = cpu_capability(), _cpu_records()
    if not default:
        CPU_FILE.write_text(here + "\n"); return
    per_nb.pop(_rel(path), None)
    if here != default: per_nb[_rel(path)] = here
    head = CPU_FILE.read_text().splitlines()[0]
    CPU_FILE.write_text("\n".join([head] + [f"{k} {v}" for k, v in sorted(per_nb.items())]) + "\n")

def same_text(a:str, b:str, numbers:bool=True) -> bool:
    "Equal apart from noise, numbers compared as numbers (integers exactly, decimals within 2% or 0.01) when `numbers`."
    a, b = _clean(a), _clean(b)
    if not numbers:  # and not the widths they were printed with (numpy wraps an array by its numbers' widths)
        loose = lambda t: re.sub(r"\s+", "", LOOSE_NUM.sub("#", t))
        return loose(a) == loose(b)
    if NUM.sub("#", a) != NUM.sub("#", b): return False
    for x, y in zip(NUM.findall(a), NUM.findall(b)):
        if x == y: continue
        if not any(c in x + y for c in ".eE"): return False
        if not math.isclose(float(x), float(y), rel_tol=0.02, abs_tol=0.01): return False
    return True

def png_size(b64:str):
    raw = base64.b64decode(_text(b64))
    return struct.unpack(">II", raw[16:24]) if raw[:8] == b"\x89PNG\r\n\x1a\n" else None

def summary(outputs) -> dict:
    "What is compared of a cell's outputs: text per kind, and the sizes of its images."
    text, images = [], []
    for o in outputs:
        if o.get("output_type") == "stream":
            if o.get("name") == "stdout": text.append(("stdout", _text(o.get("text", ""))))
        elif o.get("output_type") in ("execute_result", "display_data"):
            d = o.get("data", {})
            if "image/png" in d: images.append(png_size(d["image/png"]))
            for m in TEXT_MIMES:
                if m in d and "image/png" not in d: text.append((m, _text(d[m]))); break
        elif o.get("output_type") == "error": text.append(("error", o.get("ename", "") + ": " + o.get("evalue", "")))
    # consecutive stdout chunks are one stream
    merged = []
    for k, v in text:
        if merged and k == merged[-1][0] == "stdout": merged[-1] = (k, merged[-1][1] + v)
        else: merged.append((k, v))
    return {"text": merged, "images": images}

def compare_cell(old, new, numbers:bool=True) -> list:
    a, b = summary(old), summary(new)
    problems = []
    if a["images"] != b["images"]: problems.append(f"images {a['images']} -> {b['images']}")
    if [k for k, _ in a["text"]] != [k for k, _ in b["text"]]:
        problems.append(f"outputs {[k for k, _ in a['text']]} -> {[k for k, _ in b['text']]}")
    else:
        for (k, x), (_, y) in zip(a["text"], b["text"]):
            if not same_text(x, y, numbers):
                problems.append(f"{k} differs:\n    committed: {x.strip()[:300]!r}\n    re-run:    {y.strip()[:300]!r}")
    return problems

def has_outputs(path) -> bool:
    nb = json.loads(Path(path).read_text())
    return any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")

def rerun(path, write:bool=False) -> list:
    "Run `path` as nbdev_test does and return its differences from the committed outputs (or write them: `write`)."
    os.environ.setdefault("MPLBACKEND", "Agg"); os.environ["IN_TEST"] = "1"
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.config import get_config
    from nbdev.processors import NBProcessor, FrontmatterProc
    path = Path(path).resolve()
    committed = {c["id"]: c.get("outputs", []) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"}
    flags = set(get_config().tst_flags.split())
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    if str(getattr(nb, "frontmatter_", {}).get("skip_exec", "")).lower() == "true": return []
    def skip(cell):
        if cell.cell_type != "code": return True
        if "nbdev_export(" in cell.source: return True
        return bool(flags & (getattr(cell, "directives_", {}) or {}).keys())
    root = next(p for p in path.parents if (p / "settings.ini").is_file())
    sys.path.insert(0, str(root))
    shell = CaptureShell(path, mpl_format="png")
    for c in nb.cells:  # CaptureShell keeps a cell's old outputs when it now shows nothing: start from none
        if not skip(c): c.outputs = []
    with working_directory(path.parent):
        try: shell.run_all(nb, exc_stop=True, preproc=skip)
        except Exception: return [f"{path.name}: the notebook failed:\n{shell.prettytb(fname=path)}"]
    if write:
        from execnb.nbio import read_nb, write_nb
        fresh = {c.id: c.get("outputs", []) for c in nb.cells if c.cell_type == "code" and not skip(c)}
        out = read_nb(path)
        for c in out.cells:
            if c.cell_type == "code" and c.id in fresh: c.outputs = fresh[c.id]
        write_nb(out, path); record_cpu(path); return []
    problems, numbers = [], cpu_capability() == written_on(path)
    for cell in nb.cells:
        if cell.cell_type != "code" or skip(cell): continue
        for p in compare_cell(committed.get(cell.id, []), cell.get("outputs", []), numbers):
            problems.append(f"{path.name}, cell {cell.id}: {p}")
    return problems

def rerun_in_subprocess(path) -> list:
    "`rerun` in a fresh Python, as nbdev_test runs each notebook in its own process."
    r = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True, text=True)
    if r.returncode not in (0, 1): return [f"{Path(path).name}: the check crashed:\n{r.stderr[-3000:]}"]
    return json.loads(r.stdout.strip().splitlines()[-1])

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*"); ap.add_argument("--n_workers", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS); ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.write:
        failed = False
        for p in args.notebooks:
            problems = rerun(p, write=True); failed |= bool(problems)
            print(*problems, sep="\n") if problems else print("wrote the outputs of", p)
        sys.exit(1 if failed else 0)
    if args.one:
        problems = rerun(args.one); print(json.dumps(problems)); sys.exit(1 if problems else 0)
    paths = args.notebooks or sorted(str(p) for p in (ROOT / "nbs").rglob("*.ipynb")
                                     if ".ipynb_checkpoints" not in str(p) and not p.name.startswith("_") and has_outputs(p))
    here = cpu_capability()
    other = [p for p in paths if written_on(p) != here]
    if other:
        print(f"torch runs {here} kernels on this CPU and the outputs of {len(other)} of the {len(paths)} notebooks were "
              f"written with other ones ({', '.join(sorted({written_on(p) or 'unknown' for p in other}))}): their numbers "
              "are not compared, only text with numbers masked, layout and image sizes")
    with ThreadPoolExecutor(args.n_workers) as ex: results = list(ex.map(rerun_in_subprocess, paths))
    problems = [p for r in results for p in r]
    for p in problems: print(p)
    print(f"{len(paths)} notebooks re-run, {len(problems)} differences from their committed outputs")
    sys.exit(1 if problems else 0)
