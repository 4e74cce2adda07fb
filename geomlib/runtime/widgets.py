"""Live controls for readers who run a notebook: ipywidgets bound to a drawing function.

One pattern for every chapter: the result is shown through a display handle updated in place, never
captured by an ``Output`` widget (capturing output into a widget while papermill/nbclient executes
the notebook can deadlock the run: nbclient#312, nbconvert#2029). The static page gets sliders from
:func:`geomlib.runtime.plotting.slider_animation` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def live_controls(
    draw: Callable[..., object],
    controls: dict,
    *,
    rows: Sequence[Sequence[str]] | None = None,
    manual: bool = False,
) -> None:
    """Display ipywidgets ``controls`` and what ``draw(**values)`` returns, redrawn on every change.

    ``draw`` returns something to display, usually a matplotlib ``Figure`` (closed here, so the
    backend does not show it twice), or a ``str`` message. The result is shown through a display
    handle that is updated in place, not captured by an ``Output`` widget: capturing output into a
    widget while a notebook is executed by papermill/nbclient can deadlock the run (nbclient#312,
    nbconvert#2029).

    Parameters
    ----------
    controls
        ``{parameter name: widget}``; each widget's ``value`` is passed to ``draw`` by name.
    rows
        the parameter names per row of controls (default: all in one row).
    manual
        redraw only when the "Run" button is pressed (for draws that take seconds); nothing is
        drawn until then.
    """
    import ipywidgets as widgets
    from IPython.display import DisplayHandle, Pretty, display

    def render() -> object:
        shown = draw(**{name: control.value for name, control in controls.items()})
        if isinstance(shown, Figure):
            plt.close(shown)
        return Pretty(shown) if isinstance(shown, str) else shown  # a message, without repr's quotes

    boxes = [widgets.HBox([controls[name] for name in row]) for row in (rows or [list(controls)])]
    handle = DisplayHandle()
    if manual:
        button = widgets.Button(description="Run")
        display(widgets.VBox([*boxes, button]))
        handle.display(Pretty("Press Run to draw."))
        button.on_click(lambda _: handle.update(render()))
        return
    display(widgets.VBox(boxes))
    handle.display(render())
    for control in controls.values():
        control.observe(lambda _: handle.update(render()), names="value")
