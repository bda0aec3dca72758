"""The records: every attribute autotune stores, written and read back through one module, on a real study."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from autotune.records import (
    SCHEMA,
    StudyRecord,
    TrialRecord,
    attributes,
    put_study,
    put_trial,
    study_record,
    trial_record,
)


def test_a_trials_record_round_trips_through_optunas_storage() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    put_trial(trial, setting="Euler, 4 steps, CFG 5", setting_key="k", model_calls=8.0, guided_calls=4.0)
    put_trial(trial, values={"clip_score": [30.5, 31.0], "seconds": [0.2, 0.21]}, rough={"clip_score": 30.5})
    study.tell(trial, [30.75, 0.2])
    stored = study.trials[0]
    # stored as plain attributes, one per field (a metric's values as <metric>_values): what the dashboard shows
    assert stored.user_attrs == {
        "setting": "Euler, 4 steps, CFG 5", "setting_key": "k", "model_calls": 8.0, "guided_calls": 4.0,
        "clip_score_values": [30.5, 31.0], "seconds_values": [0.2, 0.21], "rough_values": {"clip_score": 30.5},
    }  # fmt: skip
    r = trial_record(stored)
    assert (r.setting, r.setting_key, r.model_calls, r.guided_calls) == ("Euler, 4 steps, CFG 5", "k", 8.0, 4.0)
    assert r.values == {"clip_score": [30.5, 31.0], "seconds": [0.2, 0.21]} and r.rough == {"clip_score": 30.5}
    assert (r.baseline, r.reused_from, r.fail_reason, r.interrupted) == (False, None, None, False)  # the defaults


def test_a_studys_record_appends_each_chunk_of_renders_and_reads_them_together() -> None:
    study = optuna.create_study()
    put_study(study, schema=SCHEMA, race_images=12, renders={3: {"0:1": {"clip_score": 30.0}}})
    put_study(study, renders={3: {"1:1": {"clip_score": 29.5}, "2:1": {"clip_score": 29.0}}})  # the next chunk
    put_study(study, renders={5: {"1:1": {"clip_score": 29.0}}})  # another trial's
    # each chunk an attribute of its own: what was stored is never rewritten
    assert set(study.user_attrs) == {"schema", "race_images", "renders.3.0:1", "renders.3.1:1", "renders.5.1:1"}
    r = study_record(study.user_attrs)
    assert r.renders == {
        3: {"0:1": {"clip_score": 30.0}, "1:1": {"clip_score": 29.5}, "2:1": {"clip_score": 29.0}},
        5: {"1:1": {"clip_score": 29.0}},
    }
    assert (r.schema, r.race_images, r.exhausted, r.confirmations) == (SCHEMA, 12, False, [])
    assert study_record({}).schema == 0  # a study from before the records were versioned
    # a study stored before chunks kept a trial's images in one attribute: read the same
    assert study_record({"renders.3": {"0:1": {"clip_score": 30.0}}}).renders == {3: {"0:1": {"clip_score": 30.0}}}


def test_a_field_no_record_has_is_refused_before_anything_is_stored() -> None:
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(TypeError, match="'setting_keys'"):
        put_trial(trial, setting="x", setting_keys="typo")
    with pytest.raises(TypeError, match="'exhausted_now'"):
        put_study(study, exhausted_now=True)
    with pytest.raises(TypeError, match="retried"):
        attributes(retried=3)
    assert trial.user_attrs == {} and study.user_attrs == {}


def test_a_stored_attribute_no_field_knows_is_ignored_on_reading() -> None:
    """An attribute a newer autotune (or a user) stored does not break reading the record."""
    r = trial_record(dataclasses.make_dataclass("T", [("user_attrs", dict)])({"worker": "h:1", "future": 1}))
    assert r == TrialRecord(worker="h:1")
    assert study_record({"exhausted": True, "future": 2}) == StudyRecord(exhausted=True)
