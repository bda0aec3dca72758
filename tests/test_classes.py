"""From a request log to a study that speaks for the traffic: classes that sample their prompts,
held-out prompts, traffic shares, and the fleet's saving."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autotune.cli import main
from autotune.micro import glyph_data

THIN_BACKGROUNDS, BOLD_BACKGROUNDS = ("white", "yellow"), ("red", "blue", "green")


def glyph_log(path: Path, seed: int = 0) -> dict[str, str]:
    """A mixed request log of the glyph world, JSON lines with counts and repeated lines: 90 distinct
    thin prompts (ink on white or yellow) and 60 bold (on red, blue or green). Returns prompt -> class."""
    rng = random.Random(seed)
    every = glyph_data.combos()
    truth, rows = {}, []
    for name, bold, backgrounds, n in (("thin", False, THIN_BACKGROUNDS, 90), ("bold", True, BOLD_BACKGROUNDS, 60)):
        group = [g for g in every if g.bold == bold and g.background in backgrounds]
        for g in rng.sample(group, n):
            prompt = glyph_data.caption(g)
            truth[prompt] = name
            rows += [{"prompt": prompt, "count": rng.randint(1, 4)} for _ in range(rng.choice((1, 1, 2)))]
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return truth


def counts_of(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out[row["prompt"]] = out.get(row["prompt"], 0) + row["count"]
    return out


def held_out_by_class(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("# classes."):
            current = line.removeprefix("# classes.")
            out[current] = []
        elif line and not line.startswith("#"):
            assert current is not None
            out[current].append(line)
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    folder = tmp_path_factory.mktemp("classes")
    truth = glyph_log(folder / "requests.jsonl")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["classes", "suggest", str(folder / "requests.jsonl"), "--out", str(folder / "glyphs.toml"),
                     "--clip-model", "glyphs"])  # fmt: skip
    assert code == 0, err.getvalue()
    return folder / "glyphs.toml", truth, err.getvalue()


def test_the_written_classes_recover_the_log_and_k_by_its_stated_criterion(written) -> None:  # type: ignore[no-untyped-def]
    from sklearn.metrics import adjusted_rand_score

    from autotune.config import load_config

    path, truth, err = written
    cfg = load_config(path)  # runs as it is: a valid study file
    assert cfg.name == "glyphs" and len(cfg.classes) == 2 and cfg.metrics.clip_model == "glyphs"  # the router's CLIP
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("k = ")] == [
        f"k = {k}" for k in range(2, 9)
    ]
    assert "k = 2: mean silhouette" in err and "<- chosen" in err.splitlines()[0]
    held = held_out_by_class(path.with_name("glyphs_holdout.txt"))
    found = {p: c for c in cfg.classes for p in (*cfg.classes[c], *held[c])}
    assert sorted(found) == sorted(truth)  # every distinct prompt is in one class, as a study or held-out prompt
    prompts = sorted(truth)
    assert adjusted_rand_score([truth[p] for p in prompts], [found[p] for p in prompts]) >= 0.9
    assert set(cfg.classes) == {"thin", "bold"}  # named after their most distinctive word


def test_each_class_studies_a_sample_of_its_members_not_its_most_central(written) -> None:  # type: ignore[no-untyped-def]
    from autotune.config import load_config
    from autotune.weights.clip import centroid, load_text_encoder

    path, _, _ = written
    cfg = load_config(path)
    held = held_out_by_class(path.with_name("glyphs_holdout.txt"))
    encode = load_text_encoder("glyphs")
    for c, prompts in cfg.classes.items():
        assert len(prompts) == 16 and not set(prompts) & set(held[c])  # the held-out file has no study prompt
        members = [*prompts, *held[c]]
        emb = encode(members)
        sim = emb @ centroid(emb)
        central = {members[i] for i in np.argsort(-sim)[:16]}
        assert set(prompts) != central  # what the old `suggest` listed: the 16 most typical
        rank = {members[i]: r for r, i in enumerate(np.argsort(-sim))}
        assert max(rank[p] for p in prompts) >= len(members) - len(members) // 16  # the least typical stratum too


def test_the_router_of_the_study_sends_held_out_prompts_to_their_class(written) -> None:  # type: ignore[no-untyped-def]
    from autotune.config import load_config
    from autotune.results.recommendations_file import router_data
    from autotune.serving.router import Router
    from autotune.weights.clip import class_embedding, load_text_encoder

    path, _, _ = written
    cfg = load_config(path)
    encode = load_text_encoder("glyphs")
    data = router_data({c: class_embedding(encode, p) for c, p in cfg.classes.items()}, ("glyphs", None))
    router = Router(data["centroids"], encode, 0.0)  # as the study stores it (the threshold aside)
    held = held_out_by_class(path.with_name("glyphs_holdout.txt"))
    pairs = [(c, router.route(p)[0]) for c, prompts in held.items() for p in prompts]
    assert len(pairs) == 150 - 32 and sum(a == b for a, b in pairs) / len(pairs) >= 0.95


def test_the_traffic_shares_are_the_logs_requests_duplicates_counted(written) -> None:  # type: ignore[no-untyped-def]
    from autotune.config import load_config

    path, _, _ = written
    cfg = load_config(path)
    counts = counts_of(path.with_name("requests.jsonl"))
    held = held_out_by_class(path.with_name("glyphs_holdout.txt"))
    total = sum(counts.values())
    for c, share in cfg.traffic.items():
        assert share == pytest.approx(sum(counts[p] for p in (*cfg.classes[c], *held[c])) / total, abs=1e-4)
    assert sum(cfg.traffic.values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ("", "expected one request per line"),
        ('{"prompt": "a cat"}\n{"text": "a dog"}\n', ':2: expected an object with a non-empty "prompt" string'),
        ('{"prompt": "a cat", "count": 0}\n', ':1: "count": expected a positive integer'),
        ('{"prompt": "a cat", "count": "3"}\n', ':1: "count": expected a positive integer'),
        ('{"prompt": "a cat", "count": 1.5}\n', ':1: "count": expected a positive integer'),
        ('{"prompt": "a cat"\n', ":1: expected a JSON object, not valid JSON"),
        ("a cat\na dog\na cat\n", "--k: expected 1..2 (the log's distinct prompts), got 3"),
    ],
)
def test_a_bad_log_is_one_line_naming_file_and_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log: str, message: str
) -> None:
    path = tmp_path / ("requests.jsonl" if log.startswith("{") else "requests.txt")
    path.write_text(log)
    out = tmp_path / "new.toml"
    code = main(["classes", "suggest", str(path), "--out", str(out), "--k", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and str(path) in err, err
    assert not out.exists() and not (tmp_path / "new_holdout.txt").exists()


@pytest.mark.slow
def test_a_study_on_the_written_file_states_the_fleets_saving(
    tmp_path: Path, study_file: Callable[..., Path], seconds_by_evaluations: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny study file as the template, the glyph log's classes (4 study prompts each): the study
    runs on the file as written, and `recommend` states the fleet's speed-up, the traffic-weighted
    (harmonic) mean of the class speed-ups it lists."""
    glyph_log(tmp_path / "requests.jsonl")
    template = study_file(name="template", n_trials=4)
    template.write_text(template.read_text().replace("[recommend]", '[metrics]\nclip_model = "glyphs"\n[recommend]'))
    out = tmp_path / "fleet.toml"
    assert main(["classes", "suggest", str(tmp_path / "requests.jsonl"), "--out", str(out), "--study", str(template),
                 "--per-class", "4", "--k", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["study", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(out), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    shares = data["fleet"]["shares"]
    each = {c: 1.0 if d["trial"] == d["baseline"]["trial"] else d["speedup"] for c, d in data["classes"].items()}
    expected = 1 / sum(shares[c] / s for c, s in each.items())
    assert data["fleet"]["speedup"] == pytest.approx(expected) and shares["default"] == pytest.approx(0, abs=1e-3)
    assert main(["recommend", str(out)]) == 0
    table = capsys.readouterr().out
    assert f"fleet: {expected:.2f}x" in table and "on the traffic shares" in table


def test_two_classes_whose_best_word_is_the_same_are_named_by_their_next_word() -> None:
    from autotune.serving.classes import _names

    ink = ["blue ink on white paper", "blue ink on grey paper"]
    background = ["a blue background with a red letter", "a blue background with a green letter", "blue ink, blue"]
    assert _names([ink, background, ["a bold cat", "a bold dog"]]) == ["paper", "background", "bold"]
    red = ["red hat", "red cap", "red top", "red box"]
    assert _names([["blue cat", "blue dog"], ["blue fish", "blue bird"], red]) == ["blue", "blue_bird", "red"]
    assert _names([["a cat"], ["a cat"]]) == ["cat", "cat_2"]  # nothing else to tell them by
