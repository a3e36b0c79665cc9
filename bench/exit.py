"""How long `databricks-cv train` takes to end once its work is done: the console script (`console`: `main`, then
`gc.freeze()`) against `main` alone, on the same short training, one after the other, in one run of this script.

    python bench/exit.py                                   # rt_detr_tiny, 1 epoch on 64 shapes images, 2 rounds
    python bench/exit.py --preset quickstart --set training.max_time=1 --rounds 1   # the quickstart's model and data

Each round runs the same command both ways in a subprocess that prints `time.time()` to stderr when the command has
returned (its last line printed, its files and MLflow run closed); the exit time is from then to the end of the
process, as the parent sees it. Prints both exit times per round and their ratio (console / main). What the shutdown
spends, without the freeze, is the cyclic garbage collector's passes over everything the training left in memory.
"""
import argparse, subprocess, sys, tempfile, time
from pathlib import Path

WRAP = """
import sys, time
from databricks_cv import cli
code = cli.{entry}()
sys.stdout.flush(); print(time.time(), file=sys.stderr, flush=True)
sys.exit(code)
"""

def one(entry:str, args:list, workdir:Path) -> tuple:
    "Seconds the command ran, seconds from its return to the process's end."
    argv = ["databricks-cv", *args]
    code = f"import sys; sys.argv = {argv!r}\n" + WRAP.format(entry=entry)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir)
    end = time.time()
    if r.returncode: sys.exit(f"the command failed ({entry}):\n{r.stderr[-3000:]}")
    returned = float(r.stderr.strip().splitlines()[-1])
    return returned - t0, end - returned

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="rt_detr_tiny")
    p.add_argument("--set", action="append", default=[], help="a key=value override (repeatable)")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-exit-"))
    sets = a.set or ["training.max_epochs=1", "data.shapes.n_images=64"]
    ratios = []
    for k in range(a.rounds):
        row = {}
        for entry in ("main", "console"):
            args = ["train", a.preset, f"training.output_dir={work}/runs-{entry}-{k}", f"data.shapes.path={work}/shapes", *sets]
            row[entry] = one(entry, args, work)
        ratios.append(row["console"][1] / row["main"][1])
        print(f"round {k + 1}: command {row['main'][0]:.1f} s / {row['console'][0]:.1f} s; exit after it: main {row['main'][1]:.2f} s, "
              f"console {row['console'][1]:.2f} s, ratio {ratios[-1]:.2f}", flush=True)
    print(f"exit time, console / main: {', '.join(f'{r:.2f}' for r in ratios)} (goal: well under 1; work folder {work})")
