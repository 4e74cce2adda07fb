"""geomlib.runtime.plotting: layout checks on rendered figures."""

import matplotlib.pyplot as plt
import numpy as np

from geomlib.runtime import plotting


def test_long_titles_of_neighbouring_images_do_not_overlap():
    caption = "a large red circle in the center on a striped blue background named zorvu"
    titles = [f"{k}: {caption}" for k in "ABC"]
    fig = plotting.image_grid(np.zeros((3, 8, 8, 3)), nrows=1, titles=titles, size=2.6)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 <= right.x0, (left, right)
    assert all(box.x0 >= 0 and box.x1 <= fig.bbox.width for box in boxes)  # inside the figure
    plt.close(fig)
