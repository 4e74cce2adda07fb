"""The project's offline text-to-image model: a procedural captioned world (``world``), the one
builder of SD-architecture pipelines (``build``), training (``python -m geomlib.sd.mini.train``) and
its quality gates (``quality``). The trained model ships in ``data/mini-sd``."""
