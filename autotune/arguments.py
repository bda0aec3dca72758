"""The command line: its parser, and its values checked as the same values in a study file are: a bad one is
one line and exit 2 (argparse's ``type=``, through the parser's one-line errors), before anything loads or
is written."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

from autotune.config.tables import device_expected

__all__ = ["device", "image_numbers", "parse_duration", "parser", "port", "positive_int"]

ARTIFACTS_HELP = "trial images: a folder or s3://bucket/prefix (default: [storage] artifacts, else the study's own)"


def parse_duration(text: str) -> float:
    """Seconds in ``"8h"``, ``"1h30m"``, ``"90s"``, ``"45m"`` or a plain number of seconds (above zero:
    a study given no time would stop before its first render)."""
    text = text.strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and parts is not None:
        h, m, s = (float(x) if x else 0.0 for x in parts.groups())
        seconds = h * 3600 + m * 60 + s
    else:
        raise argparse.ArgumentTypeError(f"expected a duration such as 8h, 90m, 1h30m or 600, got {text!r}")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration above zero (such as 8h, 90m or 600), got {text!r}")
    return seconds


def device(text: str) -> str:
    if expected := device_expected(text):
        raise argparse.ArgumentTypeError(expected)
    return text


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def image_numbers(text: str) -> list[int]:
    seeds = [s.strip() for s in text.split(",")]
    if not all(s.isdigit() for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0 separated by commas, got {text!r}")
    return [int(s) for s in seeds]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"autotune: error: {message} (see: {self.prog} --help)\n")


def _reads_a_study(p: argparse.ArgumentParser, artifacts: bool = False) -> None:
    """The study file, where its storage is and (``artifacts``) where its trial images are."""
    p.add_argument("config", type=Path, help="study file, e.g. studies/demo.toml")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<study dir>/<name>.db)")
    if artifacts:
        p.add_argument("--artifacts", help=ARTIFACTS_HELP)


def parser(commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The ``autotune`` command line; each subcommand runs ``commands[its name]`` (``"classes suggest"``)."""
    from autotune.serving.export import FORMATS

    top = _Parser(
        prog="autotune", description=("Find the cheapest Stable Diffusion inference settings that still look right.")
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("study", help="run or resume the study of a study file (every prompt class)")
    _reads_a_study(p, artifacts=True)
    p.add_argument(
        "--n-trials",
        type=positive_int,
        help="settings rendered per class to reach (the study's total, not this run's; default: search.n_trials)",
    )
    p.add_argument("--timeout", type=parse_duration, help="stop starting trials after this long: 8h, 90m, 600")
    p.add_argument("--device", type=device, help="override model.device: cpu, cuda, cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes on this machine sharing the study (one per GPU with device cuda); default 1",
    )
    p.add_argument(
        "--new-version",
        action="store_true",
        help="the model, size, metrics, seeds or reference changed: start NAME.vN.CLASS beside the old study",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # run trials only, write nothing
    p.add_argument(
        "--no-reference-check",
        action="store_true",
        help="skip checking that the reference setting converges (N vs 2N steps)",
    )
    p.set_defaults(func=commands["study"])

    p = sub.add_parser("report", help="write studies/NAME/report.html: Pareto plots, image comparisons, grids")
    _reads_a_study(p, artifacts=True)
    p.add_argument(
        "--render-grid",
        action="store_true",
        help="render a full steps x scheduler grid per class (loads the model); default: use stored trial images",
    )
    p.add_argument("--device", type=device, help="override model.device for --render-grid: cpu, cuda, cuda:N")
    p.set_defaults(func=commands["report"])

    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard, with trial images")
    _reads_a_study(p, artifacts=True)
    p.add_argument("--port", type=port, default=8080, help="port to serve on (default: 8080)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 exposes it to the network)"
    )
    p.set_defaults(func=commands["dashboard"])

    p = sub.add_parser(
        "validate", help="check recommendations on held-out prompts; exit 1 when one fails or is untested"
    )
    p.add_argument("config", type=Path, help="study file, e.g. studies/demo.toml")
    p.add_argument("--prompts", type=Path, required=True, help="held-out prompts, one per line")
    p.add_argument(
        "--seeds",
        type=image_numbers,
        help="comma-separated image numbers, e.g. 0,1,2: image n of a prompt draws the noise of "
        "autotune.noise_seed(prompt, n) (default: search.seeds)",
    )
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<study dir>/<name>.db)")
    p.add_argument("--device", type=device, help="override model.device: cpu, cuda, cuda:N")
    p.add_argument(
        "--clip-tolerance", type=float, help="override recommend.clip_tolerance (negative: must beat the baseline)"
    )
    p.add_argument(
        "--lpips-tolerance", type=float, help="override recommend.lpips_tolerance (negative: must beat the baseline)"
    )
    p.add_argument(
        "--allow-untested", action="store_true", help="pass even if a class got no held-out prompt (default: exit 1)"
    )
    p.set_defaults(func=commands["validate"])

    p = sub.add_parser("classes", help="prompt classes: suggest them from a prompt log")
    classes = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = classes.add_parser("suggest", help="a request log -> a study file: classes, sampled prompts, held-out, traffic")
    p.add_argument("log", type=Path, help="request log: one prompt per line, or JSON lines with prompt (and count)")
    p.add_argument("--out", type=Path, required=True, help="the study file to write (NAME_holdout.txt beside it)")
    p.add_argument("--study", type=Path, help="template study file: its tables (not its classes) and its CLIP")
    p.add_argument("--k", type=positive_int, help="number of classes (default: the best mean silhouette of 2..--max-k)")
    p.add_argument("--max-k", type=positive_int, default=8, help="the most classes tried without --k (default: 8)")
    p.add_argument("--per-class", type=positive_int, default=16, help="study prompts per class (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and of each class's sample (default: 0)")
    p.add_argument("--clip-model", default="tiny", help='open_clip model without --study ("glyphs", "micro": shipped)')
    p.add_argument("--clip-pretrained", help="open_clip weights, e.g. laion2b_s34b_b79k")
    p.set_defaults(func=commands["classes suggest"])

    p = sub.add_parser("schedulers", help="list the schedulers a model can use, with aliases, cost and variants")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("config", type=Path, nargs="?", help="study file whose [model] to describe")
    group.add_argument(
        "--model", help='model id: "micro", "glyphs", "tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", a hub id, a folder'
    )
    p.set_defaults(func=commands["schedulers"])

    p = sub.add_parser("recommend", help="print the recommended setting per prompt class")
    _reads_a_study(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help="a table, or the JSON")
    p.set_defaults(func=commands["recommend"])

    p = sub.add_parser("export", help="the recommendations for diffusers, AUTOMATIC1111 or ComfyUI")
    p.add_argument("study", type=Path, help="study file, or its recommendations.json")
    p.add_argument("--format", choices=FORMATS, required=True, help="diffusers: a Python module; else JSON")
    p.add_argument(
        "--check", action="store_true", help="render the A1111/ComfyUI settings as those tools do and judge them"
    )
    p.add_argument(
        "--device", type=device, help="device for --check: auto, cpu, cuda, cuda:N (default: the study file's)"
    )
    p.set_defaults(func=commands["export"])
    return top
