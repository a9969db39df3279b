"""Fuzzing the files orchestrator/ reads back (tests/fuzzing.py): a checkpoint's meta.json, a
--config YAML, a search space and a sweep's spec. Each input is read, or refused with the project's
own error naming the file; never a traceback or a hang. `python bench/fuzz.py` runs them long."""

import pytest
from hypothesis import HealthCheck, given, settings

import fuzzing as fz

settings.register_profile("cnnctl-ci", max_examples=25, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("cnnctl-ci")

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120)]


@settings(max_examples=80)
@given(fz.meta_inputs())
def test_fuzz_checkpoint_meta(data):
    fz.run_one(fz.check_meta, data)


@settings(max_examples=40)
@given(fz.yaml_inputs(fz.CONFIG))
def test_fuzz_config_yaml(data):
    fz.run_one(fz.check_config, data)


@settings(max_examples=40)
@given(fz.yaml_inputs(fz.SEARCH))
def test_fuzz_search_space_yaml(data):
    fz.run_one(fz.check_search, data)


@settings(max_examples=25)
@given(fz.yaml_inputs(fz.sweep_spec()))
def test_fuzz_sweep_spec(data):
    fz.run_one(fz.check_sweep, data)
