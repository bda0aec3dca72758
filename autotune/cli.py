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
from typing import Any

from autotune.arguments import parser
from autotune.config import ConfigError, ConfigWarning, load_config
from autotune.files import Kept, WriteFailed, check_writable, write_failure
from autotune.process import deferred, install, preload, run_main, said

__all__ = ["main"]


def _load(args: argparse.Namespace) -> Any:
    """The study file, ``--artifacts`` (a folder relative to here, or s3://...) replacing its [storage]."""
    import dataclasses

    from autotune.config import StorageConfig
    from autotune.config.tables import artifacts_location

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
        except Exception as e:  # a full disk; the study's storage, after a stop that cut a write: the stop stays
            if isinstance(e, WriteFailed):
                text = str(e)
            elif (reason := write_failure(e)) is not None:
                text = f"the outputs could not be written (the study's storage failed: {reason})"
            else:
                raise
            if not warn:
                return text
            print(f"autotune: warning: {text}", file=sys.stderr)
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
    from autotune.results.recommendations_file import recommendations_data

    cfg = load_config(args.config)
    outcomes = recommend(cfg, storage=args.storage)
    if args.format == "json":
        print(json.dumps(recommendations_data(outcomes.cfg, outcomes), indent=2))
    else:
        print(format_table(outcomes.cfg, outcomes))
    return _lacking(_unrecommended(outcomes))


def cmd_export(args: argparse.Namespace) -> int:
    from autotune.results.recommendations_file import load_recommendations
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
    store = reader_store(cfg, [o.stored.artifacts for o in outcomes.values()])
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


def _parser() -> argparse.ArgumentParser:
    return parser({
        "study": cmd_study, "report": cmd_report, "dashboard": cmd_dashboard, "validate": cmd_validate,
        "classes suggest": cmd_classes_suggest, "schedulers": cmd_schedulers, "recommend": cmd_recommend,
        "export": cmd_export,
    })  # fmt: skip


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
