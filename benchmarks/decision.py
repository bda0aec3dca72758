"""Search and decision together, through autotune's own loop, judged on prompts and seeds no study used.

    .venv/bin/python benchmarks/decision.py [--studies 8] [--trials 40] [--classes thin,bold] [--model glyphs]
        [--procedures product,optimiser] [--merge]   # --merge keeps what results/ holds for the others
    .venv/bin/python benchmarks/decision.py --summarise   # the summaries of results/decision.json again
    .venv/bin/python benchmarks/decision.py --model flow  # the flow model: results/decision-flow.json

On the trained ``glyphs`` micro model (32 px colour glyphs, its CLIP; the LPIPS backbone is random)
and the two classes of studies/demo.toml (20 prompts each), a space of 605 settings (11 lines:
Euler and UniPC with default, trailing and Karras variants, DPM++ 2M with default and trailing, DPM++ 2M
Karras, DDIM with default and trailing; x 11 step counts 2..30 x CFG 3, 4, 5, 6, 7). Each simulated study runs
``autotune.study.decide.ClassRun``, the loop ``autotune study`` runs (baseline first; confirm, race,
the recommendation's neighbours, else a new setting: the decision's proposal or the optimiser's), on
an in-memory Optuna study, with a stand-in for the renderer that renders every (setting, prompt,
seed) on demand through autotune's own Evaluator and caches it. Each study draws its 2 search seeds,
its racing and confirmation seeds from pools, an order of the class's prompts and the optimiser's
seed; timings are drawn around each setting's measured serving cost (3 calls of batch 1 after a
warm-up, timed alone: x lognormal(0, 0.1) per call). Two procedures:

- ``product``: the default, ``front_share = 0.34`` (a third of the new settings are TPE's);
- ``optimiser``: ``front_share = 1``, TPE chooses every setting and racing and confirmation follow
  its picks, as the two-stage procedure before issue 20 did (which raced only after the search).

The truth: every setting of the space cheaper than a study's pick or than the true answer, and each
pick, rendered on the 16 held-out prompts of the class (studies/demo_holdout.txt, combinations no
class lists) x 4 image numbers no study uses, each image its own noise (``autotune.noise_seed``, as
the product renders). A setting *truly qualifies* when its mean CLIP difference to the baseline
there is within -tolerance and its mean LPIPS difference within the LPIPS tolerance (the demo's: 0.5
x the baseline's seed-to-seed CLIP standard deviation, 0.1 x seed-to-seed LPIPS); it *robustly
qualifies* when the product's one-sided 95 % bound over those prompts is (:func:`paired_bound`, each
difference capped at the collapse threshold) and its collapsed share is no worse than the rule
allows. Two answers, the cheapest truly qualifying setting in the whole space (by measured serving
seconds) and the cheapest robustly qualifying one; "kept" is measured against both, in model calls
first. Each answer's standard error of the mean difference is printed beside its tolerance.
Per class: how often the pick is truly worse; its true speed-up as a share of the answer's (median);
how often the baseline is kept although a 1.5x setting truly qualifies; the images the study
rendered (search, racing, confirmation, and the references of the units it used) against the
exhaustive grid's (every setting on every class prompt x 2 seeds). Every speed-up is printed beside
its ratio of model evaluations; a benchmark whose timings stray from the calls by more than
``PHYSICAL`` refuses them.

``--model flow``: the same on the ``flow`` micro model (the glyph world in Flux's layout, true CFG) and
the classes of studies/demo_flow.toml, a space of 330 settings (6 lines: Euler (flow) with Flux's
dynamic shift, Karras and beta sigmas and a fixed shift of 3, DPM++ 2M (flow), UniPC (flow); x 11 step
counts 2..28 x true CFG 2..6), baseline and default Euler (flow) 28 at true CFG 4; the truth on the 13
held-out prompts per class of studies/demo_flow_holdout.txt (every combination the classes' inks and
backgrounds allow that training never captioned) x 5 image numbers.

Writes benchmarks/results/decision.json (decision-flow.json); renders are cached in
benchmarks/cache/decision-<model>-*.json, named after the shipped weights (retrained weights render anew).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
Key = tuple[str, tuple[tuple[str, Any], ...], int, float]


@dataclasses.dataclass(frozen=True)
class World:
    """A shipped micro model, its demo study, held-out prompts and the benchmark's grid on it."""

    model: str  # autotune's name of the micro model
    study: str  # its demo study (studies/), whose [model], [call], [metrics], [baseline], [recommend], classes are used
    holdout: str  # held-out prompts (studies/), routed to a class by its first words ("a thin ...")
    lines: list[tuple[str, dict[str, Any]]]  # (scheduler, variant options) of the grid
    steps: list[int]
    guidance: list[float]
    baseline: Key
    search: str  # the study's [search] space, the grid's lines as autotune's options
    truth_seeds: list[int]  # image numbers no study uses; each image its own noise
    label: str  # the model as every figure names it


GLYPHS = World(
    "glyphs", "demo.toml", "demo_holdout.txt",
    [
        ("euler", {}),
        ("euler", {"timestep_spacing": "trailing"}),
        ("euler", {"sigmas": "karras"}),
        ("dpmpp_2m", {}),
        ("dpmpp_2m", {"timestep_spacing": "trailing"}),
        ("unipc", {}),
        ("unipc", {"timestep_spacing": "trailing"}),
        ("unipc", {"sigmas": "karras"}),
        ("ddim", {}),
        ("ddim", {"timestep_spacing": "trailing"}),
        ("dpmpp_2m_karras", {}),  # DPM++ 2M [sigmas=karras] under any spacing steps through the same schedule
    ],
    [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30], [3.0, 4.0, 5.0, 6.0, 7.0], ("dpmpp_2m_karras", (), 30, 5.0),
    'steps = [2, 30]\nschedulers = ["euler", "dpmpp_2m", "unipc", "ddim", "dpmpp_2m_karras"]\nguidance = [3.0, 7.0]\n'
    'variants = ["sigmas", "timestep_spacing"]',
    [500, 501, 502, 503], "glyphs model (trained; LPIPS backbone random)",
)  # fmt: skip
FLOW = World(
    "flow", "demo_flow.toml", "demo_flow_holdout.txt",
    [
        ("flow_euler", {}),  # Flux's dynamic shift at the model's resolution
        ("flow_euler", {"sigmas": "karras"}),
        ("flow_euler", {"sigmas": "beta"}),
        ("flow_euler", {"shift": 3.0}),  # a fixed shift, dynamic shifting off
        ("flow_dpmpp_2m", {}),
        ("flow_unipc", {}),
    ],
    [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 28], [2.0, 3.0, 4.0, 5.0, 6.0], ("flow_euler", (), 28, 4.0),
    'steps = [2, 28]\nschedulers = ["flow_euler", "flow_dpmpp_2m", "flow_unipc"]\nguidance = [2.0, 6.0]\n'
    'variants = ["sigmas", "shift"]',
    [500, 501, 502, 503, 504],  # 13 held-out prompts per class (every one the classes' inks and grounds allow) x 5
    "flow model (Flux layout, true CFG; trained; LPIPS backbone random)",
)  # fmt: skip
WORLDS = {w.model: w for w in (GLYPHS, FLOW)}
BASELINE, TRUTH_SEEDS = GLYPHS.baseline, GLYPHS.truth_seeds  # the glyphs world's, read by procedure.py and search.py
SEARCH_POOL = [0, 1, 2, 3, 4, 5]
CONFIRM_POOL = list(range(20, 36))
NOISE = 0.1  # lognormal sigma of one timed call around the setting's measured cost
PHYSICAL = 1.25  # refuse a timed speed-up above this factor x its model-call ratio
PROCEDURES = {"product": 0.34, "optimiser": 1.0}  # front_share of each procedure (see above)


def _weights_digest(world: World) -> str:
    """The model's and its CLIP's weight digests (autotune's own, as a study records them): the cached
    metrics are theirs."""
    from autotune.config import ModelConfig
    from autotune.micro import clip_dir
    from autotune.model.sources import weights_digest

    return "-".join(str(weights_digest(ModelConfig(id=m))) for m in (world.model, str(clip_dir(world.model))))


def cache_path(world: World) -> Path:
    """The world's render cache: per-image metrics of (setting, prompt, image number), and timings."""
    return HERE / "cache" / f"decision-{world.model}-{_weights_digest(world)}-noise-per-image.json"


def _study_text(front_share: float, n_trials: int, world: World = GLYPHS) -> str:
    demo = (ROOT / "studies" / world.study).read_text()
    space = f"""
[search]
{world.search}
guidance_step = 1.0
n_trials = {n_trials}
seeds = [0, 1]
front_share = {front_share}
"""
    keep = [
        part
        for part in demo.split("\n[")
        if part.split("]")[0] in ("model", "call", "metrics", "baseline", "reference", "recommend")
        or part.startswith("classes.")
    ]
    text = 'name = "decision"\n' + space + "\n[" + "\n[".join(keep) + "\n"
    return re.sub(r"(\[reference\][^\[]*?)steps = \d+", r"\1steps = 100", text)  # the cache's references


class Renders:
    """Per-image CLIP and LPIPS of every (class, setting, prompt, seed), and each setting's serving seconds,
    rendered on demand through autotune's own Evaluator and cached."""

    def __init__(self, world: World = GLYPHS) -> None:
        self.world, self.cache = world, cache_path(world)
        self.data: dict[str, Any] = json.loads(self.cache.read_text()) if self.cache.exists() else {}
        self.evaluator: Any = None
        self.dirty = 0
        self.cfg: Any = None

    def load(self) -> Any:
        if self.evaluator is None:
            from autotune.config import load_config
            from autotune.model.evaluate import Evaluator
            from autotune.model.pipeline import resolve_config

            self.tmp = tempfile.TemporaryDirectory()
            path = Path(self.tmp.name) / "decision.toml"
            path.write_text(_study_text(0.34, 40, self.world).replace('device = "auto"', 'device = "cpu"'))
            self.cfg = resolve_config(load_config(path))
            self.evaluator = Evaluator(self.cfg, self.cfg.default_storage, "cpu")
        return self.evaluator

    def config(self) -> Any:
        if self.cfg is None:
            self.load()
        return self.cfg

    def units(self, key: Key, prompts: list[str], seeds: list[int]) -> dict[tuple[str, int], dict[str, float]]:
        """Metrics of each (prompt, seed) of ``key``, rendering what the cache lacks."""
        from autotune.space.settings import Settings

        name = repr(key)
        todo = [(q, s) for q in prompts for s in seeds if f"{name}|{q}|{s}" not in self.data]
        if todo:
            ev = self.load()
            settings = Settings.make(key[0], key[2], key[3], dict(key[1]))
            by_seed: dict[int, list[str]] = {}
            for q, s in todo:
                by_seed.setdefault(s, []).append(q)
            for s, qs in by_seed.items():
                e = ev.evaluate(settings, qs, [s], timed=False)
                for i, q in enumerate(qs):
                    self.data[f"{name}|{q}|{s}"] = {m: v[i] for m, v in e.per_image.items()}
                self.dirty += len(qs)
            if self.dirty > 500:
                self.save()
        return {(q, s): self.data[f"{name}|{q}|{s}"] for q in prompts for s in seeds}

    def seconds(self, key: Key) -> float:
        """Median of 3 serving calls of the setting (batch 1, after a warm-up), timed alone: its cost."""
        from autotune.model.render import time_serving
        from autotune.space.settings import Settings

        name = f"{key!r}|seconds"
        if name not in self.data:
            ev = self.load()
            m = self.cfg.model
            settings = Settings.make(key[0], key[2], key[3], dict(key[1]))
            self.data[name] = statistics.median(
                time_serving(ev.pipeline, settings, "a thin black letter A on a white background", 0, m.height, m.width)
            )
            self.dirty += 25  # a timing costs about 25 images' worth: saved with them
        return float(self.data[name])

    def seed_lpips(self, c: str) -> float:
        name = f"{c}|seed_lpips"
        if name not in self.data:
            cfg = self.config()
            self.data[name] = self.load().seed_lpips(cfg.classes[c][: cfg.search.first_prompts(len(cfg.classes[c]))])
        return float(self.data[name])

    def save(self) -> None:
        self.cache.parent.mkdir(exist_ok=True)
        self.cache.write_text(json.dumps(self.data))
        self.dirty = 0


def space(world: World = GLYPHS) -> list[Key]:
    out = [(n, tuple(sorted(o.items())), s, g) for n, o in world.lines for s in world.steps for g in world.guidance]
    return [k for k in out if k != world.baseline] + [world.baseline]


def grid_images(r: Renders, c: str) -> int:
    """The exhaustive grid's images for class ``c``: every setting on every class prompt x 2 seeds."""
    return len(space(r.world)) * len(r.config().classes[c]) * 2


def model_calls(key: Key) -> int:
    from autotune.space import schedulers

    return key[2] * schedulers.get(key[0]).calls_per_step * (2 if key[3] > 1 else 1)


class Stand:
    """autotune's Scorer protocol, answered from :class:`Renders` with this study's timing noise."""

    def __init__(self, r: Renders, class_name: str, rng: random.Random, prompts: list[str]) -> None:
        self.r, self.c, self.rng, self.images = r, class_name, rng, 0
        self.prompt_of = prompts  # the study's own order of the class's prompts

    @property
    def family(self) -> Any:
        return self.r.load().family

    @property
    def scheduler_config(self) -> Any:
        return self.r.load().scheduler_config

    def evaluate(self, settings: Any, prompts: Any, seeds: Any, timed: bool = True) -> Any:
        from autotune.model.evaluate import Evaluation

        key: Key = (settings.scheduler, settings.options, settings.steps, settings.guidance)
        rows = self.r.units(key, list(prompts), list(seeds))
        self.images += len(rows)
        per_image = {m: [rows[(q, s)][m] for q in prompts for s in seeds] for m in ("clip_score", "lpips")}
        seconds = self.time(settings, prompts[0], seeds[0], 3) if timed else []
        from autotune.space import schedulers

        return Evaluation(per_image, settings.steps * schedulers.get(settings.scheduler).calls_per_step, None, seconds)

    def time(self, settings: Any, prompt: str, seed: int, repeats: int) -> list[float]:
        key: Key = (settings.scheduler, settings.options, settings.steps, settings.guidance)
        return [self.r.seconds(key) * math.exp(self.rng.gauss(0, NOISE)) for _ in range(repeats)]


def one_study(r: Renders, c: str, seed: int, front_share: float, n_trials: int) -> dict[str, Any]:
    """A study of class ``c`` through autotune's own loop; what it picked and what it rendered."""
    import dataclasses

    import optuna

    from autotune.config import load_config
    from autotune.config.resolve import resolve
    from autotune.space import schedulers
    from autotune.study.decide import ClassRun
    from autotune.study.run import open_class_study
    from autotune.study.sampling import make_sampler
    from autotune.study.trials import TrialRunner

    rng = random.Random(seed)
    base_cfg = r.config()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decision.toml"
        path.write_text(_study_text(front_share, n_trials, r.world))
        cfg = resolve(load_config(path), base_cfg.family, schedulers.names())
    prompts = list(cfg.classes[c])
    rng.shuffle(prompts)
    seeds = tuple(rng.sample(SEARCH_POOL, 2))
    confirm = rng.sample(CONFIRM_POOL, len(cfg.recommend.confirm_seeds))  # as many as the product's [recommend]
    recommend = dataclasses.replace(cfg.recommend, confirm_seeds=tuple(confirm))
    search = dataclasses.replace(cfg.search, seeds=seeds, seed=seed)
    cfg = dataclasses.replace(cfg, search=search, recommend=recommend, classes={**cfg.classes, c: tuple(prompts)})
    stand = Stand(r, c, rng, prompts)
    study = open_class_study(cfg, c, optuna.storages.InMemoryStorage())
    study.sampler = make_sampler(cfg.search.sampler, seed)
    study.set_user_attr("seed_lpips", r.seed_lpips(c))
    study.set_user_attr("scheduler_base", dict(stand.scheduler_config))
    objective = TrialRunner(cfg, study, c, stand, n_trials, rng=random.Random(seed))
    run = ClassRun(cfg, study, c, stand, objective)
    while run.step():
        pass
    rec = run.recommendation()
    s = run.settings()[rec.chosen.number]
    pick: Key = (s.scheduler, s.options, s.steps, s.guidance)
    return {"pick": pick, "images": stand.images, "settings": len(run.trials), "confirmed": rec.met_tolerance,
            "reason": rec.reason}  # fmt: skip


def truth(r: Renders, c: str, key: Key, holdout: list[str]) -> dict[str, float]:
    """Mean differences to the baseline on the held-out prompts and seeds."""
    a, b = r.units(key, holdout, r.world.truth_seeds), r.units(r.world.baseline, holdout, r.world.truth_seeds)
    return {m: statistics.fmean(a[u][m] - b[u][m] for u in a) for m in ("clip_score", "lpips")}


def tolerance(r: Renders, c: str, holdout: list[str]) -> dict[str, float]:
    """The demo's tolerances, from the baseline's truth images (its seed-to-seed CLIP spread)."""
    b = r.units(r.world.baseline, holdout, r.world.truth_seeds)
    spread = (
        statistics.fmean(statistics.variance([b[(q, s)]["clip_score"] for s in r.world.truth_seeds]) for q in holdout)
        ** 0.5
    )
    cfg = r.config()
    return {
        "clip_score": cfg.recommend.clip_tolerance_sd * spread,
        "lpips": cfg.recommend.lpips_tolerance * r.seed_lpips(c),
    }


def qualifies(d: dict[str, float], tol: dict[str, float]) -> bool:
    return d["clip_score"] >= -tol["clip_score"] and d["lpips"] <= tol["lpips"]


def rule_tolerance(r: Renders, tol: dict[str, float]) -> Any:
    """The product's :class:`Tolerance` of the truth: the demo's tolerances and collapse thresholds."""
    from autotune.decision.bounds import Tolerance
    from autotune.decision.tolerance import collapse_of

    rec = r.config().recommend
    return Tolerance(tol, None, collapse_of(rec), rec.broken_share)


def truth_bounds(r: Renders, key: Key, holdout: list[str], rtol: Any) -> list[Any]:
    """The product's bounds (means and collapsed share) of ``key`` against the baseline on the truth images."""
    from autotune.decision.evidence import Candidate
    from autotune.decision.rule import verdicts

    def indexed(k: Key) -> dict[tuple[int, int], dict[str, float]]:
        return {(holdout.index(q), s): v for (q, s), v in r.units(k, holdout, r.world.truth_seeds).items()}

    return verdicts(Candidate(1, indexed(key)), Candidate(0, indexed(r.world.baseline)), rtol)


def collapsed_on_truth(r: Renders, key: Key, holdout: list[str], rtol: Any) -> list[int]:
    """The truth images on which ``key`` collapsed and on which the baseline did (against each other), of how many."""
    from autotune.decision.bounds import BROKEN

    b = next(x for x in truth_bounds(r, key, holdout, rtol) if x.metric == BROKEN)
    return [*b.collapsed, b.images]


def robust(r: Renders, key: Key, holdout: list[str], rtol: Any) -> bool:
    from autotune.decision.rule import overall

    return key == r.world.baseline or overall(truth_bounds(r, key, holdout, rtol)) == "pass"


def standard_errors(r: Renders, key: Key, holdout: list[str]) -> dict[str, float]:
    """The standard error of the truth's mean difference to the baseline, per metric, over its prompts."""
    a, b = r.units(key, holdout, r.world.truth_seeds), r.units(r.world.baseline, holdout, r.world.truth_seeds)
    out = {}
    for m in ("clip_score", "lpips"):
        means = [statistics.fmean(a[(q, s)][m] - b[(q, s)][m] for s in r.world.truth_seeds) for q in holdout]
        out[m] = statistics.stdev(means) / math.sqrt(len(means))
    return out


def answer(r: Renders, c: str, holdout: list[str], tol: dict[str, float], rtol: Any = None) -> Key:
    """The cheapest setting of the whole space (by measured seconds) whose truth mean is within ``tol``
    (with ``rtol``: whose truth bounds pass the product's rule), visiting the space cheapest first: only
    settings cheaper than it need their truth rendered."""
    for k in sorted(space(r.world), key=lambda k: (r.seconds(k), model_calls(k))):
        if k == r.world.baseline or far_off(r, k, holdout, tol):
            continue
        if robust(r, k, holdout, rtol) if rtol is not None else qualifies(truth(r, c, k, holdout), tol):
            return k
    return r.world.baseline


def far_off(r: Renders, key: Key, holdout: list[str], tol: dict[str, float]) -> bool:
    """A setting 3 tolerances or more outside on the first truth seed, skipped by the answer's search (the
    other two seeds would have to beat the baseline on average to bring it back)."""
    a, b = r.units(key, holdout, r.world.truth_seeds[:1]), r.units(r.world.baseline, holdout, r.world.truth_seeds[:1])
    d = {m: statistics.fmean(a[u][m] - b[u][m] for u in a) for m in ("clip_score", "lpips")}
    return d["clip_score"] < -3 * tol["clip_score"] or d["lpips"] > 3 * tol["lpips"]


def retime(r: Renders, keys: list[Key], factor: float = 1.5) -> None:
    """Time again every setting of ``keys`` whose seconds stray above the straight line of seconds on model
    calls (least squares over them) by more than ``factor``: another job took the cores during its calls."""
    xs, ys = [model_calls(k) for k in keys], [r.seconds(k) for k in keys]
    fit = statistics.linear_regression(xs, ys)
    for k, x, y in zip(keys, xs, ys, strict=True):
        if y > factor * (fit.intercept + fit.slope * x):
            del r.data[f"{k!r}|seconds"]
            print(f"{k}: timed {y:.3f} s, {y / (fit.intercept + fit.slope * x):.1f}x its calls' line: timing again")
            r.seconds(k)


def check_physical(r: Renders, keys: list[Key] | None = None) -> None:
    """Refuse timings that break physics: no setting of ``keys`` (the space's by default) is faster than its
    share of the model's evaluations allows (the fixed cost of a call only makes cheap settings less fast),
    give or take ``PHYSICAL``."""
    keys = space(r.world) if keys is None else keys
    retime(r, keys)
    r.save()
    for k in keys:
        for attempt in range(2):
            speedup, calls = r.seconds(r.world.baseline) / r.seconds(k), model_calls(r.world.baseline) / model_calls(k)
            if speedup <= calls * PHYSICAL:
                break
            if attempt:
                raise SystemExit(
                    f"{k}: timed {speedup:.1f}x faster than the baseline with {calls:.1f}x fewer model evaluations, "
                    "twice; another job shared the machine: rerun alone"
                )
            print(f"{k}: {speedup:.2f}x faster than the baseline with {calls:.2f}x fewer calls: timing both again")
            for x in (k, r.world.baseline):
                del r.data[f"{x!r}|seconds"]
                r.seconds(x)
    r.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--classes", default="thin,bold")
    parser.add_argument("--model", default="glyphs", choices=sorted(WORLDS), help="the shipped micro model studied")
    parser.add_argument("--summarise", action="store_true", help="summarise results/decision.json's studies again")
    parser.add_argument("--procedures", default=",".join(PROCEDURES), help="of " + ", ".join(PROCEDURES))
    parser.add_argument("--merge", action="store_true", help="keep the other classes' and procedures' results")
    args = parser.parse_args()
    world = WORLDS[args.model]
    path = HERE / "results" / ("decision.json" if world is GLYPHS else f"decision-{world.model}.json")
    if args.summarise:
        results = json.loads(path.read_text())
        r = Renders(world)
        held = holdouts(r)
        for c, x in results.items():
            if isinstance(x, dict):
                rtol = rule_tolerance(r, x["tolerance"])
                for proc in PROCEDURES:
                    for row in x[proc]["studies"]:
                        row["collapsed_on_truth"] = collapsed_on_truth(r, ast.literal_eval(row["pick"]), held[c], rtol)
                    seeds = {"confirm_seeds": x[proc]["confirm_seeds"]}
                    x[proc] = _summary(x[proc]["studies"], x, grid_images(r, c), r.world.baseline) | seeds
        path.write_text(json.dumps(results, indent=2) + "\n")
        return
    import torch

    torch.set_num_threads(2)
    r = Renders(world)
    check_physical(r)
    held = holdouts(r)
    results: dict[str, Any] = json.loads(path.read_text()) if args.merge and path.exists() else {}
    base = world.baseline
    start = time.monotonic()
    for c in args.classes.split(","):
        tol = tolerance(r, c, held[c])
        rtol = rule_tolerance(r, tol)
        best, sound = answer(r, c, held[c], tol), answer(r, c, held[c], tol, rtol)
        base_s = r.seconds(base)
        results[c] = {**results.get(c, {}), "tolerance": tol}
        for name, k in (("answer", best), ("robust_answer", sound)):
            se = standard_errors(r, k, held[c]) if k != base else {}
            results[c] |= {name: repr(k), f"{name}_speedup": base_s / r.seconds(k),
                           f"{name}_call_ratio": model_calls(base) / model_calls(k), f"{name}_se": se}  # fmt: skip
            ses = ", ".join(f"{m} {v:.3g} (a quarter of its tolerance: {tol[m] / 4:.3g})" for m, v in se.items())
            print(f"{c} {name}: {k} {base_s / r.seconds(k):.2f}x ({model_calls(base) / model_calls(k):.2f}x fewer "
                  f"model calls); standard error of the truth's mean difference: {ses or 'the baseline'}")  # fmt: skip
        for proc in args.procedures.split(","):
            share = PROCEDURES[proc]
            rows = []
            for i in range(args.studies):
                out = one_study(r, c, 1000 * i + 7, share, args.trials)
                d = truth(r, c, out["pick"], held[c])
                speed = base_s / r.seconds(out["pick"])
                row = {**out, "pick": repr(out["pick"]), "truly_worse": not qualifies(d, tol), "speedup": speed}
                row["robustly_holds"] = robust(r, out["pick"], held[c], rtol)
                row["collapsed_on_truth"] = collapsed_on_truth(r, out["pick"], held[c], rtol)
                row["call_ratio"] = model_calls(base) / model_calls(out["pick"])
                for name in ("answer", "robust_answer"):
                    holds = row["robustly_holds"] if name == "robust_answer" else not row["truly_worse"]
                    row[f"kept_{name}"] = speed / results[c][f"{name}_speedup"] if holds else 0.0
                    row[f"kept_{name}_calls"] = row["call_ratio"] / results[c][f"{name}_call_ratio"] if holds else 0.0
                rows.append(row)
                r.save()
                grid_share = out["images"] / grid_images(r, c)
                print(
                    f"{c} {proc} study {i}: {row['pick']} {speed:.2f}x ({row['call_ratio']:.1f}x fewer model "
                    f"evaluations), truly worse: {row['truly_worse']}, robustly holds: {row['robustly_holds']}, "
                    f"{out['images']} images ({grid_share:.1%} of grid)",
                    flush=True,
                )
            results[c][proc] = _summary(rows, results[c], grid_images(r, c), r.world.baseline)
            results[c][proc]["confirm_seeds"] = len(r.config().recommend.confirm_seeds)  # as one_study draws them
    r.save()
    results["minutes"] = (time.monotonic() - start) / 60
    results["model"], results["date"] = world.label, time.strftime("%Y-%m-%d")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps(
            {c: {k: v for k, v in x.items() if k != "studies"} for c, x in results.items() if isinstance(x, dict)},
            indent=2,
        )
    )


def _summary(rows: list[dict[str, Any]], answer: dict[str, Any], grid: int, baseline: Key) -> dict[str, Any]:
    n = len(rows)
    keys = [k for name in ("answer", "robust_answer") for k in (f"kept_{name}_calls", f"kept_{name}")]
    kept = {f"{k}_median": statistics.median(x[k] for x in rows) for k in keys}
    spread = {f"{k}_quartiles": [round(q, 3) for q in statistics.quantiles([x[k] for x in rows], n=4)] for k in keys}
    return {
        **spread,
        "truly_worse": sum(x["truly_worse"] for x in rows) / n,
        "robustly_holds": sum(x["robustly_holds"] for x in rows) / n,
        **kept,
        "baseline_kept_when_1.5x_robustly_qualifies": (
            sum(x["pick"] == repr(baseline) for x in rows) / n if answer["robust_answer_speedup"] >= 1.5 else None
        ),
        "collapsed_on_truth": [sum(x["collapsed_on_truth"][i] for x in rows) for i in range(3)],  # pick, baseline, of
        "images_share_of_grid": statistics.fmean(x["images"] for x in rows) / grid,
        "grid_images": grid,
        "speedups": [round(x["speedup"], 2) for x in rows],
        "call_ratios": [round(x["call_ratio"], 2) for x in rows],
        "studies": rows,
    }


def holdouts(r: Renders) -> dict[str, list[str]]:
    """The held-out prompts of each class (studies/demo_holdout.txt for the glyphs model), routed by their first
    words ("a thin ...")."""
    lines = [
        x.strip()
        for x in (ROOT / "studies" / r.world.holdout).read_text().splitlines()
        if x.strip() and not x.startswith("#")
    ]
    return {c: [q for q in lines if q.startswith(f"a {c} ")] for c in r.config().classes}


if __name__ == "__main__":
    main()
