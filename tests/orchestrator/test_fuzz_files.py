"""Fuzzing the files orchestrator/ reads back (tests/fuzzing.py): a checkpoint's meta.json, a
--config YAML, a search space and a sweep's spec. Each input is read, or refused with the project's
own error naming the file; never a traceback or a hang. `python bench/fuzz.py` runs them long."""

import pytest
from hypothesis import HealthCheck, given, settings

import fuzzing as fz

settings.register_profile("cnnctl-ci", max_examples=25, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much])
settings.load_profile("cnnctl-ci")

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120)]


@settings(max_examples=300)
@given(fz.meta_inputs())
def test_fuzz_checkpoint_meta(data):
    fz.run_one(fz.check_meta, data)


@settings(max_examples=200)
@given(fz.yaml_inputs(fz.CONFIG))
def test_fuzz_config_yaml(data):
    fz.run_one(fz.check_config, data)


@settings(max_examples=200)
@given(fz.yaml_inputs(fz.SEARCH))
def test_fuzz_search_space_yaml(data):
    fz.run_one(fz.check_search, data)


@settings(max_examples=150)
@given(fz.yaml_inputs(fz.sweep_spec()))
def test_fuzz_sweep_spec(data):
    fz.run_one(fz.check_sweep, data)


# Found by the fuzz harness ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, problem", [(b'{"epoch": 3', "not JSON"), (b"\xfb{}", "not JSON"),
                                           (b'{"epoch": "3"}', "epoch"), (b"[]", "not an object"),
                                           (b'{"epoch": 2, "mid_epoch": true}', "layout")])
def test_a_bad_meta_json_is_one_line_naming_it_and_sorts_last(tmp_path, text, problem):
    from cnnctl.orchestrator import checkpoint as ckpt

    (tmp_path / "meta.json").write_bytes(text)
    with pytest.raises(ckpt.CheckpointError, match=f"meta.json: .*{problem}") as err:
        ckpt.load_meta(tmp_path)
    assert "\n" not in str(err.value)
    assert ckpt._order(str(tmp_path)) == (-1, -1)  # a run folder's newest checkpoint passes over it


def test_a_yaml_error_in_a_config_file_is_one_line(tmp_path):
    from cnnctl.orchestrator.config import ConfigError, resolve

    (tmp_path / "run.yaml").write_text("model:\n  name: alexnet\n   lrn: [\n")
    with pytest.raises(ConfigError) as err:
        resolve(config_file=tmp_path / "run.yaml")
    assert len(err.value.lines) == 1 and "\n" not in err.value.lines[0] and "line 3" in err.value.lines[0]


@pytest.mark.parametrize("text", [b"base: {}\nsearch: [\n", b"- 1\n", b"search: {}\n", b"\xff",
                                  b"base: {model: {name: 3}}\nsearch: {space: {}}\n",
                                  b"base: {}\nsearch: {space: {optim.lr: {choice: [0.1]}}}\nplan: {draws: x}\n"])
def test_a_damaged_sweep_spec_is_one_line_naming_it(tmp_path, text):
    from cnnctl.orchestrator.config import ConfigError
    from cnnctl.orchestrator.tune import spec as tune

    (tmp_path / tune.SPEC).write_bytes(text)
    with pytest.raises(ConfigError) as err:
        tune.load_spec(str(tmp_path))
        tune.load_draws(str(tmp_path))
    assert len(err.value.lines) == 1
    assert str(tmp_path / tune.SPEC) in err.value.lines[0] and "\n" not in err.value.lines[0]


def test_a_bad_meta_json_is_still_a_value_error_for_callers_that_pass_over_torn_ones(tmp_path):
    from cnnctl.orchestrator import checkpoint as ckpt

    (tmp_path / "meta.json").write_text('{"epoch": 1, "st')  # torn mid-write
    with pytest.raises(ValueError):
        ckpt.load_meta(tmp_path)
