"""The ``autotune`` command: one thin function per subcommand, each importing what it needs when it runs
(``--help``, ``export`` and ``recommend`` load neither Optuna nor torch).

Exit codes: 0 done; 1 no answer (the study stopped on repeated trial failures, or ended with a class whose
baseline never completed; ``validate``: a pick failed or nothing was validated); 2 bad input (one line on
stderr naming the file, the key and what was expected); 74 something could not be written (a full disk,
a read-only output, a database gone); 130 interrupted (SIGINT), 143 (SIGTERM), 129 (SIGHUP); 141 stdout
closed early (``autotune recommend ... | head``), quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from autotune.arguments import device, image_numbers, parse_duration, port, positive_int
from autotune.config import ConfigError, ConfigWarning, load_config
from autotune.files import Kept, WriteFailed, check_writable, write_failure
from autotune.process import deferred, install, preload, run_main, said

__all__ = ["main"]


ARTIFACTS_HELP = "trial images: a folder or s3://bucket/prefix (default: [storage] artifacts, else the study's own)"


def _load(args: argparse.Namespace) -> Any:
    """The study file, ``--artifacts`` (a folder relative to here, or s3://...) replacing its [storage]."""
    import dataclasses

    from autotune.config import StorageConfig
    from autotune.config.schema import artifacts_location

    cfg = load_config(args.config)
    where = getattr(args, "artifacts", None)
    if where:
        where = artifacts_location(where, "--artifacts")
        where = where if where.startswith("s3://") else str(Path(where).resolve())
        cfg = dataclasses.replace(cfg, storage=StorageConfig(artifacts=where))
    return cfg


def cmd_study(args: argparse.Namespace) -> int:
    from autotune.model.sources import located

    cfg = located(_load(args))  # the file's own keys and where its weights are, before anything heavy loads
    preload()
    from autotune.report.table import format_table, write_all, write_recommendations
    from autotune.study.run import StudyAborted, run_study

    # --timeout bounds the whole command: the imports above and the start-up count against it
    timeout = None if args.timeout is None else max(args.timeout - (time.monotonic() - _STARTED), 1e-9)
    kept = Kept(cfg.output_dir / "recommendations.json")
    try:
        outcomes = run_study(
            cfg,
            storage=args.storage,
            n_trials=args.n_trials,
            timeout=timeout,
            device=args.device,
            progress=not (args.quiet or args.worker),
            check_reference=not args.no_reference_check,
            new_version=args.new_version,
            workers=args.workers,
            decide=not args.worker,
            started=None if args.worker else kept.replace_with(write_recommendations),  # on disk: "deciding"
        )
    except ConfigError:  # refused: the previous run's outputs stay as they were
        kept.restore()
        raise
    except KeyboardInterrupt:  # keep what the night produced: write the outputs so far
        _outputs_so_far(cfg, args)
        raise
    except WriteFailed as e:  # the disk filled or the database went: the outputs where they still can be
        unwritten = _outputs_so_far(cfg, args, warn=False)
        raise WriteFailed(f"{e}{f'; {unwritten}' if unwritten else ''}") from None
    except StudyAborted as e:  # the outputs so far, each class's state saying why it stopped
        _outputs_so_far(cfg, args)
        print(f"autotune: error: {e}", file=sys.stderr)
        return 1
    if args.worker:  # a helper of `--workers N` or one of many machines' workers: the others report
        return 0
    paths = write_all(outcomes, args.storage)
    print(format_table(outcomes.cfg, outcomes))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return _lacking(_unrecommended(outcomes))


def _outputs_so_far(cfg: Any, args: argparse.Namespace, warn: bool = True) -> str | None:
    """A stopped run's outputs, from what is stored (a helper worker leaves them to its parent); those that
    cannot be written (the disk that stopped the run) are named in a warning (``warn``) or returned."""
    if args.worker:
        return None
    from autotune.report.table import write_all
    from autotune.results.reader import recommend

    with deferred():
        try:
            write_all(recommend(cfg, storage=args.storage), args.storage)
        except ConfigError:  # stopped before any study existed: nothing to write
            pass
        except WriteFailed as e:
            if not warn:
                return str(e)
            print(f"autotune: warning: {e}", file=sys.stderr)
    return None


def _unrecommended(outcomes: Any) -> dict[str, str]:
    """Each class without a recommendation: its decision's state, why it has none and what to do."""
    return {c: f"{o.decision_state}; {o.no_baseline()}" for c, o in outcomes.items() if o.recommendation is None}


def _lacking(why: dict[str, str]) -> int:
    """Exit 1, saying which classes and why, where a class has no recommendation: a run, a reading or an
    export that produced no answer is no success (a CI job, a scheduler's retry); `study`, `recommend`,
    `export` and `validate` alike."""
    if not why:
        return 0
    said = "; ".join(f"classes.{c}: {w}" for c, w in why.items())
    print(f"autotune: error: nothing recommended ({said})", file=sys.stderr)
    return 1


def cmd_recommend(args: argparse.Namespace) -> int:
    from autotune.report.table import format_table
    from autotune.results.reader import recommend
    from autotune.results.schema import recommendations_data

    cfg = load_config(args.config)
    outcomes = recommend(cfg, storage=args.storage)
    if args.format == "json":
        print(json.dumps(recommendations_data(outcomes.cfg, outcomes), indent=2))
    else:
        print(format_table(outcomes.cfg, outcomes))
    return _lacking(_unrecommended(outcomes))


def cmd_export(args: argparse.Namespace) -> int:
    from autotune.results.schema import load_recommendations
    from autotune.serving.export import export

    recs = load_recommendations(args.study)
    if recs.nothing():  # not even the baseline: nothing to export
        return _lacking(recs.unrecommended or {"-": "no class"})
    if args.check:  # the verdicts to stderr and parity.json; the export (with them) to stdout
        from autotune.parity import check_file

        print(check_file(args.study, recs, args.device), file=sys.stderr)
    print(export(recs, args.format), end="")
    return _lacking(recs.unrecommended)  # the classes that have one are exported; the others named


def cmd_report(args: argparse.Namespace) -> int:
    from autotune.report.dashboard import publish
    from autotune.report.html import write_report
    from autotune.results.reader import recommend

    outcomes = recommend(_load(args), storage=args.storage)
    check_writable(outcomes.cfg.output_dir)  # before a grid is rendered for it
    grid = None
    if args.render_grid:
        from autotune.report.grid import render_grid

        grid = render_grid(outcomes.cfg, outcomes, args.device)
    print(f"wrote {write_report(outcomes.cfg, outcomes, args.storage, grid=grid)}")
    publish(outcomes.cfg, outcomes)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from autotune.report.dashboard import bindable
    from autotune.results.reader import recommend
    from autotune.store.artifacts import reader_store

    cfg = _load(args)
    url = args.storage or cfg.default_storage
    outcomes = recommend(cfg, storage=url)  # refuses a storage with no study yet, naming the command to run
    bindable(args.host, args.port)  # a port in use: one line, before the server's own traceback
    print(f"optuna-dashboard for {cfg.name} on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    store = reader_store(cfg, [o.attrs for o in outcomes.values()])
    run_server(url, host=args.host, port=args.port, artifact_store=store)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from autotune.validate import format_validation, read_prompts, validate

    cfg = load_config(args.config)
    prompts = read_prompts(args.prompts)
    result = validate(cfg, prompts, args.seeds, storage=args.storage, device=args.device,
                      clip_tolerance=args.clip_tolerance, lpips_tolerance=args.lpips_tolerance,
                      allow_untested=args.allow_untested)  # fmt: skip
    print(format_validation(result))
    print(f"\nwrote {cfg.output_dir / 'validation.json'}")
    return 0 if result["passed"] else 1


def cmd_classes_suggest(args: argparse.Namespace) -> int:
    from autotune.serving.classes import suggest_file

    clip = (args.clip_model, args.clip_pretrained)
    print(suggest_file(args.log, args.out, k=args.k, max_k=args.max_k, per_class=args.per_class, seed=args.seed,
                       clip=clip, template=args.study))  # fmt: skip
    return 0


def cmd_schedulers(args: argparse.Namespace) -> int:
    from autotune.config import ModelConfig
    from autotune.model.pipeline import describe_model
    from autotune.space import schedulers
    from autotune.space.settings import variant_choices

    model = load_config(args.config).model if args.config else ModelConfig(id=args.model)
    described = describe_model(model)
    family, usable = described.family, described.compatible
    print(f"{model.id}: {family.name} family; {len(usable)} schedulers it can use\n")
    head = ["name", "aliases", "class", "deterministic", "calls/step", "variants"]
    rows = []
    for name in usable:
        spec = schedulers.get(name)
        variants = ", ".join(variant_choices(name, "all", family))
        rows.append([name, ", ".join(schedulers.aliases(name)), spec.class_name, "yes" if spec.deterministic else "no",
                     str(spec.calls_per_step), variants or "-"])  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"autotune: error: {message} (see: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from autotune.serving.export import FORMATS

    parser = _Parser(
        prog="autotune", description=("Find the cheapest Stable Diffusion inference settings that still look right.")
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("study", help="run or resume the study of a study file (every prompt class)")
    p.add_argument("config", type=Path, help="study file, e.g. studies/demo.toml")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<study dir>/<name>.db)")
    p.add_argument("--artifacts", help=ARTIFACTS_HELP)
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
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("report", help="write studies/NAME/report.html: Pareto plots, image comparisons, grids")
    p.add_argument("config", type=Path, help="study file, e.g. studies/demo.toml")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<study dir>/<name>.db)")
    p.add_argument("--artifacts", help=ARTIFACTS_HELP)
    p.add_argument(
        "--render-grid",
        action="store_true",
        help="render a full steps x scheduler grid per class (loads the model); default: use stored trial images",
    )
    p.add_argument("--device", type=device, help="override model.device for --render-grid: cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard, with trial images")
    p.add_argument("config", type=Path, help="study file, e.g. studies/demo.toml")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<study dir>/<name>.db)")
    p.add_argument("--artifacts", help=ARTIFACTS_HELP)
    p.add_argument("--port", type=port, default=8080, help="port to serve on (default: 8080)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 exposes it to the network)"
    )
    p.set_defaults(func=cmd_dashboard)

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
    p.set_defaults(func=cmd_validate)

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
    p.set_defaults(func=cmd_classes_suggest)

    p = sub.add_parser("schedulers", help="list the schedulers a model can use, with aliases, cost and variants")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("config", type=Path, nargs="?", help="study file whose [model] to describe")
    group.add_argument(
        "--model", help='model id: "micro", "glyphs", "tiny", "tiny-sdxl", "tiny-sd3", a hub id or a folder'
    )
    p.set_defaults(func=cmd_schedulers)

    p = sub.add_parser("recommend", help="print the recommended setting per prompt class")
    p.add_argument("config", type=Path, help="study file, e.g. studies/demo.toml")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<study dir>/<name>.db)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="a table, or the JSON")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("export", help="the recommendations for diffusers, AUTOMATIC1111 or ComfyUI")
    p.add_argument("study", type=Path, help="study file, or its recommendations.json")
    p.add_argument("--format", choices=FORMATS, required=True, help="diffusers: a Python module; else JSON")
    p.add_argument(
        "--check", action="store_true", help="render the A1111/ComfyUI settings as those tools do and judge them"
    )
    p.add_argument(
        "--device", type=device, help="device for --check: auto, cpu, cuda, cuda:N (default: the study file's)"
    )
    p.set_defaults(func=cmd_export)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    if issubclass(category, ConfigWarning):
        print(f"autotune: warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, *args, **kwargs)  # type: ignore[arg-type]


_SHOW_WARNING = warnings.showwarning


_STARTED = time.monotonic()  # the command's start, for --timeout (reset by main)


def main(argv: Sequence[str] | None = None) -> int:
    global _STARTED
    _STARTED = time.monotonic()
    install()  # SIGINT and SIGTERM alike: exit 130 or 143, never a traceback
    warnings.showwarning = _show_warning
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return int(e.code or 0)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except ConfigError as e:
        print(f"autotune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        with deferred():
            return said(e)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, as `git log | head` does
        _stdout_gone()
        return 141
    except WriteFailed as e:  # a full disk, a read-only folder, a database gone: what is stored stays
        print(f"autotune: error: {e}", file=sys.stderr)
        return WriteFailed.exit_code
    except OSError as e:  # a file that could not be written, or standard output (`> /dev/full`)
        _flushed()
        where = e.filename or ("standard output" if write_failure(e) else None)  # every file autotune writes is named
        print(f"autotune: error: {f'{where}: ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return WriteFailed.exit_code
    except Exception as e:  # the study's database refused or went away (a full disk, a server down)
        reason = write_failure(e)
        if reason is None:
            raise
        print(f"autotune: error: the study's storage failed ({reason}); what it stored is kept", file=sys.stderr)
        return WriteFailed.exit_code


def _flushed() -> None:
    """Standard output that no longer takes what is printed is pointed at /dev/null (no second error when
    Python flushes it at exit)."""
    try:
        sys.stdout.flush()
    except OSError:
        _stdout_gone()


def _stdout_gone() -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def entry() -> None:
    """The ``autotune`` command (see :func:`autotune.process.run_main`)."""
    run_main(main)


if __name__ == "__main__":
    entry()
