"""The maths: per-sample Jacobian products and spectra (:mod:`~geomlib.core.jacobian`), the local
descriptors (:mod:`~geomlib.core.descriptors`), the exact partition of 2-D ReLU networks
(:mod:`~geomlib.core.partition`), the formulas of diffusion (:mod:`~geomlib.core.diffusion`), the
statistics (:mod:`~geomlib.core.stats`), the four-way claim checks (:mod:`~geomlib.core.claims`)
and the diversity of sample sets (:mod:`~geomlib.core.diversity`). Imports torch, numpy, scipy and
vendi-score only."""
