"""Feed every numeric option of every command 0, -1, nan, inf and 1e308 (integers: 0, -1).

    PYTHONPATH=src python benchmarks/cli_fuzz.py --out /tmp/fuzz.tsv [COMMAND ...] [--with=ARG]

Each case runs ``deepquant COMMAND ... --OPTION VALUE`` in a fresh process under ``timeout 60``
on tiny sizes (a 20-point marginals file, the synthetic chain, a 4-instance data file, all made
first in a temporary folder) and appends one tab-separated line to ``--out``: command, option,
value, exit code (124: timed out), seconds, ``TRACEBACK`` when one was printed, and the last
error line (or the last line). A bad input must end in exit code 2 (or 1 for a reported
failure) with one line naming the option and the value; docs/robustness.md, "Bad inputs:
fuzzing", lists what the runs found. ``--src`` runs another checkout (e.g. main's ``src``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOATS = ["0", "-1", "nan", "inf", "1e308"]
INTS = ["0", "-1"]
THREADS = INTS + ["1000000"]   # torch threads (fifth pass: a million could not start)
CLI = "from deepquant.cli import main; main()"


def cases(fx: str) -> list[tuple[str, str, list[str], list[str]]]:
    """(command, option, values, base arguments); OUT in a base argument is a fresh path."""
    am = ["american", "--strike", "100", "--grids", "1", "--batch-size", "64", "--max-batches",
          "2", "--paths", "256", "--dates", "4", "--seed", "0"]
    out = [("american", o, FLOATS, am) for o in
           ("--strike", "--maturity", "--spot", "--rate", "--hurst", "--eta", "--rho", "--xi0",
            "--tol")]
    out.append(("american", "--sigma", FLOATS, am + ["--model", "bs"]))
    out += [("american", o, FLOATS, am + ["--model", "heston"]) for o in
            ("--v0", "--kappa", "--theta", "--vol-of-vol", "--rho", "--rate")]
    out.append(("american", "--barrier", FLOATS, am + ["--payoff", "up-and-out-put"]))
    out.append(("american", "--grid-rate", FLOATS, am[:3] + am[5:] + ["--grids", "2"]))
    out += [("american", o, INTS, am) for o in
            ("--dates", "--runs", "--steps-per-date", "--feature-steps", "--sig-level",
             "--patience", "--max-batches", "--batch-size", "--paths")]
    out.append(("american", "--payoff-dates", INTS, am + ["--payoff", "asian-put"]))
    out.append(("american", "--workers", INTS, am + ["--runs", "2"]))
    out.append(("american", "--grids", INTS, am[:3] + am[5:]))
    # fifth pass: --american with several grids, and its feature steps (runs with 2x and 4x
    # the dates on the finest grid)
    amer = am[:3] + am[5:] + ["--american"]
    out.append(("american", "--grids", INTS + ["3", "4", "64"], amer))
    out.append(("american", "--feature-steps", INTS + ["3", "8"],
                amer + ["--steps-per-date", "8", "--grids", "2"]))

    def bounds(payoff, *extra):
        return ["bounds", f"{fx}/m.npz", "--payoff", payoff, *extra]

    lp = ["--method", "lp"]
    out += [("bounds", "--strike", FLOATS, bounds("asian-call", "--strike", "1", *lp)),
            ("bounds", "--barrier", FLOATS, bounds("up-and-out-call", "--strike", "1", *lp)),
            ("bounds", "--strike", FLOATS, bounds("forward-start-straddle", *lp)),
            ("bounds", "--t1", INTS, bounds("forward-start-call", *lp)),
            ("bounds", "--t2", INTS, bounds("forward-start-call", *lp)),
            ("bounds", "--eps", FLOATS, bounds("asian-call", "--strike", "1", "--method",
                                               "entropic")),
            ("bounds", "--martingale-tol", FLOATS, bounds("asian-call", "--strike", "1", *lp)),
            ("bounds", "--sum-grid-size", INTS, bounds("asian-call", "--strike", "1", *lp))]
    out += [("bounds", o, FLOATS, bounds("asian-call", "--strike", "1", "--method", "certified"))
            for o in ("--rtol", "--max-seconds")]
    # fifth pass: --grid-check, on the 20-point file and on 3 points with X_0 in the middle
    out.append(("bounds", "--strike", FLOATS, bounds("asian-call", "--grid-check", *lp)))
    out.append(("bounds", "--method", ["lp", "auto", "path-lp", "certified"],
                ["bounds", f"{fx}/m3.npz", "--payoff", "european-call", "--strike", "1",
                 "--grid-check"]))
    solve = ["solve", f"{fx}/m.npz", "--eps", "0.01"]
    out += [("solve", o, v, solve) for o, v in (("--eps", FLOATS), ("--tol", FLOATS),
                                                 ("--max-iter", INTS), ("--threads", INTS),
                                                 ("--period", INTS))]

    def quotes(payoff, *extra):
        return ["quote-bounds", "--quotes", f"{fx}/c.csv", "--expiries", "30d,60d", "--thin",
                "--repair", "minimal", "--grid-size", "11", "--payoff", payoff, *extra]

    asian = quotes("asian-call", "--strike", "1")
    out += [("quote-bounds", "--strike", FLOATS, asian),
            ("quote-bounds", "--barrier", FLOATS, quotes("up-and-out-call", "--strike", "1")),
            ("quote-bounds", "--strike", FLOATS, quotes("forward-start-call")),
            ("quote-bounds", "--t1", INTS, quotes("forward-start-call")),
            ("quote-bounds", "--t2", INTS, quotes("forward-start-call")),
            ("quote-bounds", "--grid-size", INTS, asian),
            ("quote-bounds", "--top", INTS, asian),
            ("quote-bounds", "--max-seconds", FLOATS, asian + ["--method", "certified"])]
    # sixth pass: budgets around the polish's share, on a grid with a coarse start (50 points)
    # and on the 20-point file
    fifty = [x if x != "11" else "50" for x in asian]
    out.append(("quote-bounds", "--max-seconds", ["1e-9", "0.01", "0.5", "2"],
                fifty + ["--method", "certified"]))
    out.append(("bounds", "--max-seconds", ["1e-9", "0.001", "0.5"],
                bounds("lookback-call", "--strike", "1", "--method", "certified")))
    cal = ["calibrate", f"{fx}/c.csv", "--expiries", "30d,60d", "--grid-size", "20", "--out",
           "OUT.npz"]
    out += [("calibrate", o, v, cal) for o, v in (("--grid-size", INTS), ("--reg", FLOATS),
                                                   ("--window", FLOATS), ("--alpha", FLOATS))]
    out += [("chain", o, v, ["chain", "--out", "OUT.csv"])
            for o, v in (("--spot", FLOATS), ("--rate", FLOATS), ("--dividend-yield", FLOATS),
                         ("--seed", INTS))]
    out.append(("marginals", "--grid-size", INTS, ["marginals", "--out", "OUT.npz"]))
    demo = ["demo", "--out", "OUT", "--grid-sizes", "none", "--paths", "200", "--expiries",
            "30d,60d"]
    out += [("demo", o, v, demo) for o, v in (("--grid-step", FLOATS), ("--paths", INTS),
                                               ("--seed", INTS))]
    out.append(("demo", "--max-seconds", FLOATS, demo[:4] + ["10"] + demo[5:]))
    gen = ["generate", "--num", "2", "--grid-size", "20", "--n-choices", "2", "--families",
           "gbm", "--out", "OUT.h5", "--backend", "serial"]
    out += [("generate", o, v, gen) for o, v in (("--num", INTS), ("--eps", FLOATS),
                                                  ("--tol", FLOATS), ("--grid-size", INTS),
                                                  ("--chunk", INTS), ("--seed", INTS))]
    out.append(("generate", "--workers", INTS, gen[:-1] + ["local"]))
    refit = ["refit-head", "--data", f"{fx}/d.h5", "--out", "OUT", "--iterations", "2",
             "--max-instances", "2"]
    out += [("refit-head", o, v, refit) for o, v in (("--per-instance", INTS),
                                                      ("--iterations", INTS),
                                                      ("--ridge", FLOATS),
                                                      ("--max-instances", INTS),
                                                      ("--threads", THREADS))]
    ev = ["evaluate", "--test", f"{fx}/d.h5", "--max-instances", "1"]
    out += [("evaluate", "--max-instances", INTS, ev), ("evaluate", "--threads", THREADS, ev)]
    lofo = ev + ["--lofo-train", f"{fx}/d.h5", "--lofo-dir", "OUT", "--iterations", "2"]
    out += [("evaluate", o, v, lofo) for o, v in (("--iterations", INTS),
                                                   ("--per-instance", INTS),
                                                   ("--ridge", FLOATS))]
    sw = ["sweep", "--strike", "1", "--num", "2", "--periods", "2", "--no-classical"]
    out += [("sweep", o, v, sw) for o, v in (("--strike", FLOATS), ("--maturity", FLOATS),
                                              ("--periods", INTS), ("--num", INTS),
                                              ("--bump", FLOATS), ("--threads", THREADS))]
    out.append(("sweep", "--barrier", FLOATS, sw[:1] + ["--payoff", "up-and-out-call"] + sw[1:]))
    out += [("validate-data", o, FLOATS, ["validate-data", f"{fx}/d.h5"])
            for o in ("--residual-tol", "--drift-tol")]
    train = ["train", "--config", str(Path(__file__).parents[1] / "configs" / "tiny.yaml"),
             "--data", f"{fx}/d.h5", "--out-dir", "OUT"]
    out += [("train", "--max-steps", INTS, train), ("train", "--max-minutes", FLOATS, train)]
    return out


def run(args: list[str], env: dict, timeout: str = "60") -> tuple[int, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(["timeout", timeout, sys.executable, "-c", CLI, *args], env=env,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return p.returncode, time.perf_counter() - t0, p.stdout + p.stderr


def last_line(output: str) -> str:
    """The last error line, else the last line that is not a table border."""
    lines = [line.strip() for line in output.splitlines()
             if line.strip() and not set(line.strip()) <= set("─━│┃┏┓┗┛┡┩└┘ ")]
    errors = [line for line in lines if "Error" in line or "Invalid" in line]
    return (errors or lines or [""])[-1][:240]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("commands", nargs="*", help="Only these commands (default: all).")
    ap.add_argument("--out", required=True, help="Tab-separated results (appended).")
    ap.add_argument("--with", dest="with_", action="append", default=[],
                    help="Only the cases whose option or base arguments include this one "
                         "(repeatable: any of them), e.g. --with=--grid-check.")
    ap.add_argument("--src", default=str(Path(__file__).parents[1] / "src"),
                    help="The src folder whose deepquant runs [default: this checkout's].")
    a = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=a.src, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               COLUMNS="200")
    fx = tempfile.mkdtemp(prefix="cli-fuzz-")
    for made in (["marginals", "--grid-size", "20", "--dates", "0.25,0.5", "--out",
                  f"{fx}/m.npz"],
                 ["marginals", "--grid-size", "3", "--dates", "0.25", "--out", f"{fx}/m3.npz"],
                 ["chain", "--out", f"{fx}/c.csv"],
                 ["generate", "--num", "4", "--grid-size", "150", "--n-choices", "2",
                  "--backend", "serial", "--families", "gbm,merton", "--out", f"{fx}/d.h5"]):
        rc, _, output = run(made, env, timeout="300")
        if rc:
            raise SystemExit(f"making the inputs failed: {' '.join(made)}: {last_line(output)}")
    try:
        with open(a.out, "a") as f:
            for command, option, values, base in cases(fx):
                if a.commands and command not in a.commands:
                    continue
                if a.with_ and not any(w == option or w in base for w in a.with_):
                    continue
                for value in values:
                    tmp = tempfile.mkdtemp(dir=fx)
                    args = [x.replace("OUT", f"{tmp}/o") for x in base]
                    if option in args:
                        i = args.index(option)
                        del args[i:i + 2]
                    rc, seconds, output = run([*args, option, value], env)
                    f.write("\t".join([command, option, value, str(rc), f"{seconds:.1f}",
                                       "TRACEBACK" if "Traceback" in output else "",
                                       last_line(output)]) + "\n")
                    f.flush()
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(fx, ignore_errors=True)


if __name__ == "__main__":
    main()
