"""Fuzzing everything shards/ parses from files (tests/fuzzing.py has the families and the property):
mutated real shards (tar headers and members, sample keys, .cls payloads), mutated real JPEGs and
PNGs, manifests and ImageNet's label files. Each input gets a one-line error of the project's own
type naming the file (and member), or a counted skip; never a hang, a traceback, a label outside the
classes or a file written. A small derandomized budget here; `python bench/fuzz.py` runs them long."""

import pytest
from hypothesis import HealthCheck, given, settings

import fuzzing as fz

settings.register_profile("cnnctl-ci", max_examples=25, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much])
settings.load_profile("cnnctl-ci")

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120)]


@settings(max_examples=250)
@given(fz.tar_inputs())
def test_fuzz_tar_headers_and_members(case):
    fz.run_one(fz.check_shard, case)


@settings(max_examples=300)
@given(fz.member_inputs())
def test_fuzz_sample_keys_and_member_kinds(case):
    fz.run_one(fz.check_members, case)


@settings(max_examples=500)
@given(fz.family_table()["cls"][0])
def test_fuzz_cls_payloads(payload):
    fz.run_one(fz.check_cls, payload)


@settings(max_examples=300)
@given(fz.image_inputs())
def test_fuzz_jpeg_and_png(case):
    fz.run_one(fz.check_image, case)


@settings(max_examples=300)
@given(fz.manifest_inputs())
def test_fuzz_manifests(case):
    fz.run_one(fz.check_manifest, case)


@settings(max_examples=300)
@given(fz.label_inputs())
def test_fuzz_label_files(case):
    fz.run_one(fz.check_labels, case)
