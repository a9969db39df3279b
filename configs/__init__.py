"""The presets and Tune search spaces as package data: a wheel installs this folder as
``cnnctl.orchestrator.configs`` (pyproject.toml); orchestrator/config.py reads it with importlib.resources."""
