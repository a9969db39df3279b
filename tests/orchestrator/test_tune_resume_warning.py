"""`tune --resume` loads Tune's pickled state from run.storage: it says so, in one line, before it does."""

from cnnctl.orchestrator.tune import space as search_space
from cnnctl.orchestrator.tune import sweep as sweeps
from cnnctl.orchestrator.config import RunConfig


def test_resume_warns_that_it_unpickles_the_sweeps_state(tmp_path, monkeypatch):
    cfg = RunConfig.model_validate({"run": {"storage": str(tmp_path)}, "tune": {"name": "s"}})
    sweeps.save_spec(cfg, search_space.load("lrn"))
    monkeypatch.setattr(sweeps, "search", lambda base, space, resume=False: "results")
    said = []
    folder, results = sweeps.resume("s", str(tmp_path), None, say=said.append)
    assert results == "results" and folder == str(tmp_path / "s")
    warning = [line for line in said if "pickle" in line]
    assert len(warning) == 1 and "\n" not in warning[0] and str(tmp_path / "s") in warning[0], said
