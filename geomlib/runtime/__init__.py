"""What every chapter runs on: profiles and typed budgets, devices and threads
(:mod:`~geomlib.runtime.profiles`), seeding, results on disk under one key policy
(:mod:`~geomlib.runtime.cache`), shared figures (:mod:`~geomlib.runtime.plotting`) and live controls
(:mod:`~geomlib.runtime.widgets`). Imports :mod:`geomlib.core` and nothing above it."""
