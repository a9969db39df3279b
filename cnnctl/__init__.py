"""cnnctl's import namespace: `cnnctl.orchestrator`, `cnnctl.models` and `cnnctl.shards`, so that a
user's own `models` (or `shards`) package, in the folder a run starts from, never stands in for ours.
Ray puts the driver's working folder on its workers' path, where a bare `models` would be the user's.

An installed wheel holds the three packages inside this one (pyproject.toml maps them there). A source
checkout keeps them as top-level folders beside this one: the package then looks for them there too."""

import os

_here = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_here, "orchestrator")):
    __path__.append(os.path.dirname(_here))  # noqa: F821 (a package's own __path__)
