"""How long a command takes to answer: the console scripts' --help, --cfg job and a config error, against the same
command through ``python -m var_lightning.cli.<name>`` (which imports torch and Lightning before Hydra runs).

    python benchmarks/bench_startup.py [--runs 5] [--json FILE]

Each row is started ``--runs`` times after one warm-up (warm disk cache) and reports the median, min and max wall
time of the whole process. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROWS = [
    ("var-train --help", [str(BIN / "var-train"), "--help"]),
    ("var-train model.optim.lr_base=1 (a typo)", [str(BIN / "var-train"), "model.optim.lr_base=1"]),
    ("var-train --cfg job", [str(BIN / "var-train"), "--cfg", "job"]),
    ("var-sample pretrained=var_d16 --help", [str(BIN / "var-sample"), "pretrained=var_d16", "--help"]),
    ("python -m var_lightning.cli.train --help", [sys.executable, "-m", "var_lightning.cli.train", "--help"]),
]


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True, timeout=300)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    print("| command | median s | min s | max s |\n|---|---|---|---|")
    for name, cmd in ROWS:
        timed(cmd)  # warm-up: the disk cache
        t = [timed(cmd) for _ in range(args.runs)]
        rows.append({"command": name, "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)})
        print(f"| `{name}` | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=1) + "\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
