"""The deadline on a busy machine: `autotune study --timeout T` on the demo study while other processes
keep every core busy. Prints, per T, the wall time of the whole command (imports, start-up, trials,
outputs), its overrun past T and whether the outputs were written.

The overrun is what was under way when T passed (a trial's render batch and its timed serving calls, a
chunk of racing, a fit's render) plus writing the outputs; nothing starts after T.

    python benchmarks/busy_deadline.py                 # T = 60, 90, 120 s with one spinning process per core
    python benchmarks/busy_deadline.py --timeouts 60 --hogs 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(timeout: int, hogs: int) -> tuple[float, int, bool]:
    """Wall seconds, exit code and whether recommendations.json and report.html were written."""
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "busy.toml"
        study.write_text((ROOT / "studies" / "demo.toml").read_text().replace('name = "demo"', 'name = "busy"', 1))
        spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            start = time.perf_counter()
            code = subprocess.run(
                [sys.executable, "-m", "autotune.cli", "study", str(study), "--timeout", str(timeout), "--quiet"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ).returncode
            wall = time.perf_counter() - start
        finally:
            for p in spin:
                p.kill()
                p.wait()
        out = Path(tmp) / "busy"
        return wall, code, (out / "recommendations.json").is_file() and (out / "report.html").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeouts", type=int, nargs="+", default=[60, 90, 120])
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="spinning processes (default: cores)")
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.hogs} spinning processes")
    print(f"{'timeout':>8}  {'wall':>7}  {'overrun':>8}  exit  outputs")
    for t in args.timeouts:
        wall, code, written = run(t, args.hogs)
        print(f"{t:>7}s  {wall:>6.1f}s  {wall - t:>+7.1f}s  {code:>4}  {'written' if written else 'MISSING'}")


if __name__ == "__main__":
    main()
