"""geomlib.runtime.widgets: live controls that redraw through a display handle."""


def test_live_controls_redraw_on_change_and_manual_waits_for_run(monkeypatch):
    """Controls drive ``draw`` by name; ``manual`` draws only on "Run"; figures are closed after use
    (shown through a display handle, never an Output widget that can hang papermill)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from geomlib.runtime.widgets import live_controls

    calls = []

    def draw(n, label):
        calls.append((n, label))
        fig, ax = plt.subplots()
        ax.set_title(f"{label} {n}")
        return fig

    open_before = set(plt.get_fignums())
    n, label = widgets.IntSlider(value=1), widgets.Text(value="a")
    live_controls(draw, {"n": n, "label": label})
    n.value = 3
    label.value = "b"
    assert calls == [(1, "a"), (3, "a"), (3, "b")]
    assert set(plt.get_fignums()) == open_before

    buttons = []

    class RecordedButton(widgets.Button):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            buttons.append(self)

    monkeypatch.setattr(widgets, "Button", RecordedButton)
    from IPython.display import DisplayHandle

    shown = []
    monkeypatch.setattr(DisplayHandle, "display", lambda self, obj, **kwargs: shown.append(obj))
    monkeypatch.setattr(DisplayHandle, "update", lambda self, obj, **kwargs: shown.append(obj))
    calls.clear()
    n = widgets.IntSlider(value=2)
    live_controls(draw, {"n": n, "label": widgets.Text(value="c")}, manual=True)
    n.value = 5
    assert calls == []
    (button,) = buttons
    button.click()
    assert calls == [(5, "c")]
    assert shown[0].data == "Press Run to draw." and isinstance(shown[1], plt.Figure)
