"""One module or package per notebook, named like it. A chapter imports :mod:`geomlib.core`,
:mod:`geomlib.runtime` and :mod:`geomlib.sd`, never another chapter and never the command line."""
