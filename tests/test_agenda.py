"""Deciding while searching, on constructed numbers: which render comes next, and which setting."""

from __future__ import annotations

import math

from autotune.config import RecommendConfig, SearchConfig
from autotune.decision.agenda import Action, near, neighbours, next_action
from autotune.decision.bounds import Tolerance
from autotune.decision.evidence import Candidate, Evidence
from autotune.decision.panel import Panel
from autotune.decision.propose import Line, Proposer, Tried
from autotune.space.settings import Settings

TOL = Tolerance({"clip_score": 1.0})
FRESH = (1000, 1001, 1002, 1003)
PANEL = Panel(n_prompts=12, search_seeds=(0, 1), race_seeds=(2,), per_chunk=4, confirm_seeds=FRESH, confirm_prompts=4)


def images(diffs: dict[int, float], seeds: tuple[int, ...] = (0, 1), base: float = 30.0) -> dict:
    return {(p, s): {"clip_score": base + d + 0.01 * s} for p, d in diffs.items() for s in seeds}


def evidence(*cands: Candidate) -> Evidence:
    ev = Evidence(("clip_score", "seconds"), 12, (0, 1), FRESH)
    for c in cands:
        ev.by_number[c.number] = c
    ev.baseline_number = 0
    ev.confirmed = [c.number for c in cands if c.confirm and c.number != 0]  # their confirmations began in this order
    return ev


ALL = {p: 0.0 for p in range(12)}
HELD_OUT = {p: 0.0 for p in range(8, 12)}  # the prompts only confirmation renders
BASE = Candidate(0, images(ALL), images(ALL, FRESH), seconds=(1.0,) * 3, cost=1.0, calls=30)
SPACE = SearchConfig(steps=(2, 30), guidance=(1.0, 9.0))  # steps of 1 and 0.5, no guidance cutoff
SETTINGS = {
    0: Settings("dpmpp_2m_karras", 30, 5.0),
    1: Settings("euler", 4, 5.0),
    2: Settings("euler", 4, 5.5),
    3: Settings("dpmpp_2m", 4, 5.0, (("timestep_spacing", "trailing"),)),
    4: Settings("unipc", 6, 5.0),
}


def cand(number: int, diffs: dict[int, float], cost: float, **kw) -> Candidate:  # type: ignore[no-untyped-def]
    return Candidate(number, images(diffs), seconds=(cost,) * 3, cost=cost, **kw)


def test_the_first_chunk_races_on_more_prompts_before_more_seeds() -> None:
    assert PANEL.chunks[0] == tuple((p, s) for p in range(4) for s in (0, 1))
    assert PANEL.chunks[1] == tuple((p, s) for p in range(4, 8) for s in (0, 1))
    assert PANEL.chunks[2] == tuple((p, 2) for p in range(4))
    assert PANEL.next_chunk(set(PANEL.chunks[0])) == PANEL.chunks[1]
    assert PANEL.search_prompts == 8 and PANEL.chunks[-1] == tuple((p, 2) for p in range(4, 8))
    assert PANEL.confirm_units == tuple((p, s) for p in range(8, 12) for s in (1000, 1001))  # held out, fresh


def test_confirmation_holds_out_a_seeded_draw_of_the_prompts_no_trial_renders() -> None:
    """A class listed easy-first (or with a theme at its end) confirms on prompts like its others: the held-out
    prompts are a draw (``holdout_seed``) among those after a trial's own, each equally often, the same on
    every resume; the search skips them. A small class's held-out prompts were once among a trial's own."""
    draws = [Panel(20, (0, 1), (2,), 4, FRESH, 8, holdout_seed=s).held_prompts for s in range(400)]
    assert all(len(d) == 8 and min(d) >= 4 for d in draws) and len(set(draws)) > 380  # of 12870
    times = [sum(q in d for d in draws) for q in range(4, 20)]  # 200 each in expectation
    assert min(times) > 160 and max(times) < 240, times
    p = Panel(20, (0, 1), (2,), 4, FRESH, 8, holdout_seed=3)
    assert p.held_prompts == draws[3] != tuple(range(12, 20))  # not the class's last prompts
    assert p.chunks[0] == tuple((q, s) for q in range(4) for s in (0, 1))  # every trial's own prompts
    assert {q for c in p.chunks for q, _ in c} == set(range(20)) - set(p.held_prompts)
    assert {q for c in p.confirm_chunks for q, _ in c} == set(p.held_prompts) and len(p.chunks[1]) == 8
    small = Panel(6, (0, 1), (), 4, FRESH, 8, holdout_seed=0)
    assert len(small.held_prompts) == 2 and min(small.held_prompts) >= 4  # was 3: prompts 3-5, 3 a trial's own


def test_an_undecided_cheap_candidate_races_on_new_prompts() -> None:
    close = cand(1, {0: -1.5, 1: 0.4, 2: -0.8, 3: 0.3}, 0.2)  # four prompts that disagree: undecided
    action = next_action(evidence(BASE, close), TOL, PANEL, SETTINGS, RecommendConfig(), race_spent=0)
    assert action == Action("race", 1, PANEL.chunks[1])  # prompts 4-7, not more seeds of prompts 0-3
    spent = next_action(evidence(BASE, close), TOL, PANEL, SETTINGS, RecommendConfig(race_budget=10), race_spent=10)
    assert spent is None


def test_a_passing_candidate_is_confirmed_before_a_dearer_undecided_one_races() -> None:
    good = cand(1, {p: 0.0 for p in range(4)}, 0.2)
    close = cand(3, {0: -1.5, 1: 0.4, 2: -0.8, 3: 0.3}, 0.5)
    action = next_action(evidence(BASE, good, close), TOL, PANEL, SETTINGS, RecommendConfig(), race_spent=0)
    assert action == Action("confirm", 1, PANEL.confirm_units)


def test_two_near_identical_finalists_are_not_both_confirmed_when_a_distinct_one_passes() -> None:
    same = {p: 0.0 for p in range(4)}
    failed = Candidate(1, images(same), images({p: -5.0 for p in range(8, 12)}, (1000, 1001)), (0.2,) * 3, 0.2)
    twin = cand(2, same, 0.21)  # euler 4 steps at CFG 5.5: only the guidance differs from the one that failed
    other = cand(3, same, 0.25)  # DPM++ 2M trailing: a different sampler
    ev = evidence(BASE, failed, twin, other)
    action = next_action(ev, TOL, PANEL, SETTINGS, RecommendConfig(), race_spent=0)
    assert near(SETTINGS[1], SETTINGS[2]) and not near(SETTINGS[1], SETTINGS[3])
    assert action == Action("confirm", 3, PANEL.confirm_units)
    alone = next_action(evidence(BASE, failed, twin), TOL, PANEL, SETTINGS, RecommendConfig(), race_spent=0)
    assert alone == Action("confirm", 2, PANEL.confirm_units)  # nothing else passes: the twin gets its turn
    capped = next_action(ev, TOL, PANEL, SETTINGS, RecommendConfig(finalists=1), race_spent=0)
    assert capped is None


def test_the_last_slot_while_the_baseline_stands_goes_to_a_candidate_with_room_not_the_cheapest_luck() -> None:
    """The cheapest of many passes is the likeliest to be luck (many settings just beyond the tolerance tempt
    the search): with one slot left and nothing confirmed, the slot goes to the cheapest candidate at least
    ``LAST_SLOT_ROOM`` tolerances inside on its search images, else the one with the most room."""
    from autotune.decision import agenda

    failed = Candidate(1, images({p: 0.0 for p in range(4)}), images({p: -5.0 for p in range(8, 12)}, (1000, 1001)),
                       (0.2,) * 3, 0.2)  # fmt: skip
    edge = cand(3, {p: -0.6 + 0.05 * (p % 2) for p in range(4)}, 0.25)  # passes, 0.4 tolerances inside at most
    roomy = cand(4, {p: 0.0 for p in range(4)}, 0.3)
    ev = evidence(BASE, failed, edge, roomy)
    last = next_action(ev, TOL, PANEL, SETTINGS, RecommendConfig(finalists=2), race_spent=0)
    assert last == Action("confirm", 4, PANEL.confirm_units)
    two_left = next_action(ev, TOL, PANEL, SETTINGS, RecommendConfig(finalists=3), race_spent=0)
    assert two_left == Action("confirm", 3, PANEL.confirm_units)  # slots to spare: the cheapest first
    assert agenda.LAST_SLOT_ROOM > 0.4


def test_the_last_slot_does_not_trade_the_whole_saving_for_a_little_more_room() -> None:
    """A real thin-class study (glyphs, seed 4): Euler 11 steps passed its search 0.26 tolerances inside,
    UniPC 27 steps 0.38 inside; the slot went to the 27 steps (1.09x) by room alone, where 11 steps (2.7x)
    held on fresh prompts in other studies. The slot weighs the saving by the room (up to LAST_SLOT_ROOM)."""
    from autotune.decision.agenda import _confirmable

    eleven, sixteen, surest = (cand(n, {p: 0.0 for p in range(4)}, c) for n, c in ((1, 0.37), (3, 0.53), (4, 0.92)))
    room = {1: 0.26, 3: 0.04, 4: 0.38}
    assert _confirmable([eleven, sixteen, surest], [], SETTINGS, room, base_cost=1.0) is eleven
    assert _confirmable([eleven, sixteen, surest], [], SETTINGS, {1: 0.05, 3: 0.04, 4: 0.9}, 1.0) is surest
    roomy = {1: 0.6, 3: 0.7, 4: 0.9}  # every one with room: the cheapest
    assert _confirmable([eleven, sixteen, surest], [], SETTINGS, roomy, base_cost=1.0) is eleven


def test_an_undecided_confirmation_goes_on_over_its_whole_panel_before_it_counts_as_failed() -> None:
    same = {p: 0.0 for p in range(4)}
    split = {8: -1.5, 9: 0.4, 10: -0.8, 11: 0.3}  # four fresh prompts that disagree: undecided
    unsure = Candidate(1, images(same), images(split, (1000, 1001)), (0.2,) * 3, 0.2)
    dearer = cand(3, same, 0.25)
    ev = evidence(BASE, unsure, dearer)
    one = RecommendConfig(finalists=1)
    action = next_action(ev, TOL, PANEL, SETTINGS, one, race_spent=0)
    assert action == Action("confirm", 1, PANEL.confirm_chunks[1])  # the same fresh prompts, more fresh seeds
    assert PANEL.confirm_chunks[1] == tuple((p, s) for p in range(8, 12) for s in (1002, 1003))
    spent = next_action(ev, TOL, PANEL, SETTINGS, one, race_spent=2048)  # the search's racing budget: not its
    assert spent == action
    whole = images(split, FRESH)  # its panel done, still undecided
    done = evidence(BASE, Candidate(1, images(same), whole, (0.2,) * 3, 0.2), dearer)
    assert next_action(done, TOL, PANEL, SETTINGS, one, race_spent=0) is None  # the one slot is spent
    more = next_action(done, TOL, PANEL, SETTINGS, RecommendConfig(finalists=2), race_spent=0)
    assert more == Action("confirm", 3, PANEL.confirm_units)
    good = Candidate(1, images(same), images({p: 0.1 for p in range(8, 12)}, FRESH), (0.2,) * 3, 0.2)
    assert next_action(evidence(BASE, good, dearer), TOL, PANEL, SETTINGS, one, race_spent=0) is None


def test_a_later_confirmation_waits_until_the_search_has_nothing_cheaper_to_try() -> None:
    """Each confirmation spends a share of the error, so a slot goes where the search found the cheapest."""
    good = cand(1, {p: 0.0 for p in range(4)}, 0.2)
    wait = next_action(evidence(BASE, good), TOL, PANEL, SETTINGS, RecommendConfig(), race_spent=0,
                       frontier=lambda c: False)  # fmt: skip
    assert wait is None  # the walk still has cheaper settings to render first
    now = next_action(evidence(BASE, good), TOL, PANEL, SETTINGS, RecommendConfig(), race_spent=0,
                      frontier=lambda c: c.number == 1)  # fmt: skip
    assert now == Action("confirm", 1, PANEL.confirm_units)


def test_the_recommendations_neighbours_race_on_its_own_images() -> None:
    same = {p: 0.0 for p in range(8)}
    chosen = Candidate(4, images(same), images(HELD_OUT, FRESH), (0.3,) * 3, 0.3)  # confirmed
    fewer = cand(1, {p: 0.0 for p in range(4)}, 0.6)  # one step fewer (here, by cost, dearer: still shown)
    action = next_action(
        evidence(BASE, chosen, fewer), TOL, PANEL, SETTINGS, RecommendConfig(), race_spent=0, margin_of=[1]
    )
    assert action == Action("race", 1, tuple(u for u in images(same) if u[0] >= 4))
    assert [s.label() for s in neighbours(SETTINGS[4], SPACE)] == [
        "UniPC, 5 steps, CFG 5",
        "UniPC, 6 steps, CFG 4.5",
        "UniPC, 6 steps, CFG 5.5",
    ]


def _proposer(beam: int = 2) -> Proposer:
    lines = [Line("euler", (), 5.0), Line("dpmpp_2m", (("timestep_spacing", "trailing"),), 5.0), Line("ddim", (), 5.0)]
    return Proposer(lines, (2, 8), 1, lambda s: float(s.steps), key=lambda s: s.label(), guidance=(1.0, 9.0), beam=beam)


def test_the_proposer_walks_rungs_cheapest_first_and_a_failed_rung_costs_a_beam() -> None:
    p = _proposer(beam=2)
    first = p.propose({}, best_cost=30)
    assert first is not None and first.steps == 2
    tried = {first.label(): Tried("fail", -3.0)}
    second = p.propose(tried, best_cost=30)
    assert second is not None and second.steps == 2 and second.scheduler != first.scheduler
    tried[second.label()] = Tried("fail", -0.5)
    third = p.propose(tried, best_cost=30)  # the beam of two failed at 2 steps: on to 3, the closer line first
    assert third is not None and third.steps == 3 and third.scheduler == second.scheduler


def test_a_line_that_failed_is_not_tried_below_and_nothing_is_proposed_at_or_above_the_best() -> None:
    p = _proposer(beam=3)
    tried = {Settings("euler", 6, 5.0).label(): Tried("fail", -1.0)}  # euler failed at 6: not at 2..6 either
    proposals = []
    for _ in range(6):
        s = p.propose(tried, best_cost=4)
        if s is None:
            break
        proposals.append(s)
        tried[s.label()] = Tried("fail", -1.0)
    assert proposals and all(s.scheduler != "euler" and s.steps < 4 for s in proposals)


def test_once_a_line_holds_nothing_dearer_is_proposed_and_its_guidance_neighbours_join() -> None:
    p = _proposer(beam=3)
    trailing = Settings("dpmpp_2m", 3, 5.0, (("timestep_spacing", "trailing"),))
    tried = {Settings(n, 2, 5.0, o).label(): Tried("fail", -2.0) for n, o in (("euler", ()), ("ddim", ()))}
    tried[Settings("dpmpp_2m", 2, 5.0, trailing.options).label()] = Tried("fail", -0.2)
    tried[trailing.label()] = Tried("pass", 0.4)
    nxt = p.propose(tried, best_cost=3.0)  # the pass at 3 is the best: only cheaper ones, at other guidance
    assert nxt is not None and nxt.steps == 2 and nxt.scheduler == "dpmpp_2m" and nxt.guidance in (4.5, 5.5)
    assert p.propose(tried, best_cost=2.0) is None


def test_a_rung_far_from_holding_costs_three_renders_and_the_walk_jumps_the_rungs_in_between() -> None:
    lines = [Line(n, (), 5.0) for n in ("euler", "dpmpp_2m", "ddim", "unipc", "lms")]
    p = Proposer(lines, (2, 30), 1, lambda s: float(s.steps), key=lambda s: s.label(), beam=4)
    tried: dict[str, Tried] = {}
    for _ in range(3):  # three lines, each 27 tolerances short at 2 steps
        s = p.propose(tried, best_cost=30)
        assert s is not None and s.steps == 2
        tried[s.label()] = Tried("fail", -50.0, 27.0)
    jumped = p.propose(tried, best_cost=30)
    assert jumped is not None and jumped.steps == 6  # 2 x 27 ** (1/3): no line is expected to hold at 3 to 5
    tried[jumped.label()] = Tried("fail", -0.5, 1.2)  # close: the next rung is the next step
    assert [s.steps for s in [p.propose(tried, best_cost=30)] if s is not None] == [6]  # the rung's beam goes on


def test_rungs_where_every_line_falls_just_short_are_climbed_by_a_doubling_stride() -> None:
    """Many cheap settings just beyond the tolerance (quality flat in steps there): the power of the steps
    predicts the next rung, and a beam at every rung would spend the night below the answer. Each rung
    where every line's mean stayed beyond the tolerance doubles the stride; one that came inside resets it."""
    lines = [Line(n, (), 5.0) for n in ("euler", "dpmpp_2m", "ddim", "unipc", "lms")]
    p = Proposer(lines, (2, 30), 1, lambda s: float(s.steps), key=lambda s: s.label(), beam=4)
    tried: dict[str, Tried] = {}
    rungs: list[int] = []
    while (s := p.propose(tried, best_cost=30)) is not None and len(rungs) < 5 * 4:
        rungs.append(s.steps)
        tried[s.label()] = Tried("fail", -0.1, 1.05)  # 1.05 tolerances short: s x 1.05 ** (1/3) is the next step
    assert sorted(set(rungs)) == [2, 3, 5, 9, 17] and rungs == sorted(rungs)  # a beam of 4 at each
    p2 = Proposer(lines, (2, 30), 1, lambda s: float(s.steps), key=lambda s: s.label(), beam=4)
    close = {ln.at(2).label(): Tried("undecided", -0.3, 0.8) for ln in lines[:4]}  # inside by their means
    assert (nxt := p2.propose(close, best_cost=30)) is not None and nxt.steps == 3  # the next step, no stride


def test_a_line_that_holds_is_searched_down_by_halves() -> None:
    line = Line("dpmpp_2m", (("timestep_spacing", "trailing"),), 5.0)
    p = Proposer([line], (2, 30), 1, lambda s: float(s.steps), key=lambda s: s.label())
    tried = {line.at(8).label(): Tried("fail", -0.2, 1.2), line.at(17).label(): Tried("pass", 0.3, 0.2)}
    assert p.propose(tried, best_cost=17).steps == 12  # type: ignore[union-attr]  # halfway between 8 and 17
    tried[line.at(12).label()] = Tried("pass", 0.1, 0.5)
    assert p.propose(tried, best_cost=12).steps == 10  # type: ignore[union-attr]  # between 8 and 12
    far = {line.at(8).label(): Tried("fail", -2.0, 5.0), line.at(17).label(): Tried("pass", 0.3, 0.2)}
    assert p.propose(far, best_cost=17).steps == 15  # type: ignore[union-attr]  # 5 short at 8: not below 8 x 5 ** (1/3)


def test_a_line_far_off_is_not_tried_again_where_its_power_of_the_steps_cannot_reach() -> None:
    """One close line keeps a rung open; its kin, far off below, wait until their own error could have fallen
    within the tolerance (at most as the third power of the steps)."""
    lines = [Line("euler", o, 5.0) for o in ((("sigmas", "karras"),), (("sigmas", "beta"),), ())]
    p = Proposer(lines, (2, 30), 1, lambda s: float(s.steps), key=lambda s: s.label(), beam=4)
    tried = {
        lines[0].at(4).label(): Tried("fail", -0.5, 1.1),  # close: the next rung is 5
        lines[1].at(4).label(): Tried("fail", -9.0, 8.0),  # 8 short: not below 4 x 2 = 8 steps
        lines[2].at(4).label(): Tried("fail", -2.0, 2.0),  # 2 short: not below ceil(4 x 1.26) = 6
    }
    walked = []
    while (s := p.propose(tried, best_cost=30)) is not None and len(walked) < 6:
        walked.append((s.options, s.steps))
        tried[s.label()] = Tried("fail", -0.5, 1.1)
    karras, beta, default = (ln.options for ln in lines)
    # rung 5 is karras's alone (default waits for 6, beta for 8), and each rung where all stayed short doubles
    # the stride: 5, 7, 11; beta joins at 11, never tried below its 8
    assert walked == [(karras, 5), (karras, 7), (default, 7), (karras, 11), (default, 11), (beta, 11)]


def test_a_line_that_failed_on_broken_images_with_better_means_is_tried_above_it() -> None:
    """A failure by the collapsed share alone can have every mean better than the baseline's (excess below 0):
    it rules out its own steps and below, as a failure at the tolerance does (a cube root of a negative excess
    once ended the study)."""
    from autotune.decision.propose import floor

    assert floor({6: Tried("fail", -0.4, -0.5)}) == 7 and floor({6: Tried("fail", -0.4, 0.3)}) == 7
    assert floor({4: Tried("fail", -9.0, 8.0), 6: Tried("fail", -0.1, -2.0)}) == 8
    line = Line("euler", (), 5.0)
    p = Proposer([line], (2, 30), 1, lambda s: float(s.steps), key=lambda s: s.label())
    nxt = p.propose({line.at(6).label(): Tried("fail", -0.4, -0.5)}, best_cost=30)
    assert nxt is not None and nxt.steps == 7


def test_two_names_for_one_schedule_are_one_line_and_a_real_difference_stays_two() -> None:
    import json

    from autotune.decision.propose import lines_of
    from autotune.micro import pipeline_dir
    from autotune.space import schedulers
    from autotune.space.families import FAMILIES

    base = json.loads((pipeline_dir("glyphs") / "scheduler" / "scheduler_config.json").read_text())
    same = lambda s: schedulers.signature(s.scheduler, base, dict(s.options))  # noqa: E731
    lines = lines_of(
        ["dpmpp_2m", "dpmpp_2m_karras", "euler"], ("sigmas", "timestep_spacing"), FAMILIES["sd"], 5.0, same
    )
    labels = [line.at(10).scheduler_label() for line in lines]
    # Karras sigmas make DPM++ 2M's spacing moot: one line of the four names, the simplest kept
    assert [x for x in labels if x.startswith("DPM++ 2M") and "arras" in x] == ["DPM++ 2M Karras"]  # one name
    # Euler's Karras sigmas start from the spacing's first sigma: leading and trailing stay two lines
    assert {"Euler [sigmas=karras]", "Euler [sigmas=karras, timestep_spacing=trailing]"} <= set(labels)
    assert len({same(line.at(10)) for line in lines}) == len(lines)


def test_a_pass_the_confirmation_did_not_bear_out_no_longer_holds_the_walk() -> None:
    line = Line("ddim", (), 5.0)
    p = Proposer([line], (2, 30), 1, lambda s: float(s.steps), key=lambda s: s.label())
    tried = {line.at(9).label(): Tried("fail", -0.5, 1.2), line.at(10).label(): Tried("pass", 0.2, 0.7)}
    first = p.propose(tried, best_cost=30)
    assert first is not None and first.steps == 9 and first.guidance != 5.0  # cheaper only: guidance neighbours
    tried[line.at(10).label()] = Tried("undecided", -0.3, 0.7)  # what ClassRun passes once the fresh images speak
    assert p.propose(tried, best_cost=30) == line.at(11)  # the rung above, on the line that came close


def test_a_rung_where_nothing_holds_costs_at_most_a_fifth_of_the_walks_settings() -> None:
    """A sampler with many variants makes many lines: a beam of a fifth of them spent 8-10 of a 40-setting
    study's renders at each low rung of the real thin class (glyphs), and the walk never reached the steps
    that hold. The beam is also at most a fifth of the settings the walk may propose."""
    lines = [Line("euler", (("s", i),), 5.0) for i in range(40)]  # 40 lines: a beam of 8 by the lines alone

    def rung_cost(budget: float) -> int:
        p = Proposer(lines, (2, 30), 1, lambda s: float(s.steps), key=lambda s: s.label(), budget=budget)
        tried: dict[str, Tried] = {}
        while (s := p.propose(tried, best_cost=30)) is not None and s.steps == 2:
            tried[s.label()] = Tried("fail", -0.5, 1.2)  # just short: the rung stays worth its beam
        return len(tried)

    assert rung_cost(math.inf) == 8 and rung_cost(26.4) == 5 and rung_cost(10) == 3
