"""Benchmarks: each module is a script (`python bench/loader.py`, `make bench`), run beside its
siblings. Their reusable parts are imported as a package by the tests: `bench.cputime` (CPU-seconds
of a process tree), `bench.comm` (bytes counted in the collectives), `bench.mini_imagenet` (a
miniature ImageNet in the original layouts). pytest puts the repository on the path (pyproject.toml);
bench/ is not in the wheel."""
