"""``python -m geomlib``: the command line of :mod:`geomlib.cli` (``describe``, ``merge``)."""

from geomlib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
