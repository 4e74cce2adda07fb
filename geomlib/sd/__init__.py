"""Latent diffusion, shared by the chapters and the command line: loading pipelines
(:mod:`~geomlib.sd.pipelines`), the decoder as a function and its descriptors
(:mod:`~geomlib.sd.decoder`), generation with trajectories (:mod:`~geomlib.sd.sampling`), image and
prompt files (:mod:`~geomlib.sd.images`), resumable describe runs (their inputs
:mod:`~geomlib.sd.items`, the run :mod:`~geomlib.sd.runs`, its parquet parts :mod:`~geomlib.sd.store`)
and the offline model (:mod:`~geomlib.sd.mini`)."""
