import numpy as np
import pytest

from geomlib.core.diversity import pixel_features, vendi_diversity


def test_vendi_diversity_counts_distinct_samples():
    assert vendi_diversity(np.ones((5, 3))) == pytest.approx(1.0)
    assert vendi_diversity(np.eye(4)) == pytest.approx(4.0)
    # two orthogonal clusters of three identical samples each: two effective samples
    assert vendi_diversity(np.repeat(np.eye(2), 3, axis=0)) == pytest.approx(2.0)


def test_vendi_diversity_refuses_empty_and_zero_features():
    with pytest.raises(ValueError, match="all-zero"):
        vendi_diversity(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="at least one"):
        vendi_diversity(np.zeros((0, 2)))


def test_pixel_features_box_average_in_vae_range():
    images = np.zeros((1, 4, 4, 3))
    images[0, :2, :2] = 1.0  # one white quadrant
    features = pixel_features(images, size=2).reshape(2, 2, 3)
    np.testing.assert_allclose(features[..., 0], [[1.0, -1.0], [-1.0, -1.0]])
    assert not pixel_features(np.full((2, 8, 8, 3), 0.5)).any()  # grey is the zero vector
