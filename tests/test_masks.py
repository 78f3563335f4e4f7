import numpy as np
import pytest

from ftwt_keras import masks


def as_np(x):
    return np.asarray(x).tolist()


def test_mass_mask_keeps_filters_within_the_mass():
    # normalized: 0.4, 0.3, 0.2, 0.1 -> cumulative 0.4, 0.7, 0.9, 1.0
    scores = np.array([[0.1, 0.4, 0.2, 0.3]], "float32")
    assert as_np(masks.mass_mask(scores, 0.7)) == [[0, 1, 0, 1]]
    # The filter whose addition crosses r is off.
    assert as_np(masks.mass_mask(scores, 0.85)) == [[0, 1, 0, 1]]
    assert as_np(masks.mass_mask(scores, 0.9)) == [[0, 1, 1, 1]]
    assert as_np(masks.mass_mask(scores, 0.39)) == [[0, 0, 0, 0]]


def test_mass_mask_uses_spatial_max_of_absolute_value():
    x = np.zeros((1, 2, 2, 3), "float32")
    x[0, 0, 0, 0] = -6.0  # |.| counts: score 6
    x[0, 1, 1, 1] = 3.0
    x[0, 0, 1, 1] = 1.0  # max, not sum: score stays 3
    x[0, 1, 0, 2] = 1.0
    # normalized 0.6, 0.3, 0.1
    assert as_np(masks.mass_mask(x, 0.6)) == [[1, 0, 0]]
    assert as_np(masks.mass_mask(x, 0.95)) == [[1, 1, 0]]


def test_threshold_one_drops_only_dead_filters():
    scores = np.array([[5.0, 0.0, 1e-9, 1.0], [1.0, 1.0, 1.0, 1.0]], "float32")
    assert as_np(masks.mass_mask(scores, 1.0)) == [[1, 0, 0, 1], [1, 1, 1, 1]]


def test_all_zero_sample_gives_all_zero_mask_without_nan():
    x = np.zeros((2, 4, 4, 5), "float32")
    x[1, 0, 0, 2] = 1.0
    for r in (1.0, 0.9, 0.5):
        m = np.asarray(masks.mass_mask(x, r))
        assert not np.isnan(m).any()
        assert m[0].tolist() == [0, 0, 0, 0, 0]
        # One filter holds all the mass: it crosses any r < 1, so it is off.
        assert m[1].tolist() == ([0, 0, 1, 0, 0] if r == 1.0 else [0] * 5)
    assert np.asarray(masks.uniform_mask(x, 0.4))[0].tolist() == [0] * 5


def test_mass_mask_per_sample_and_ties():
    scores = np.array([[1, 1, 1, 1], [8, 1, 1, 0]], "float32")
    m = np.asarray(masks.mass_mask(scores, 0.5))
    assert m[0].sum() == 2  # two of four equal filters hold exactly half
    assert m[1].tolist() == [0, 0, 0, 0]  # 0.8 alone crosses 0.5
    assert np.asarray(masks.mass_mask(scores, 0.8))[1].tolist() == [1, 0, 0, 0]


def test_uniform_mask_prunes_lowest_fraction_and_dead():
    scores = np.array([[0.5, 0.1, 0.3, 0.0, 0.2]], "float32")
    assert as_np(masks.uniform_mask(scores, 0.4)) == [[1, 0, 1, 0, 1]]
    assert as_np(masks.uniform_mask(scores, 0.0)) == [[1, 1, 1, 0, 1]]
    assert as_np(masks.target_mask(scores, 0.6, "uniform")) == [[1, 0, 1, 0, 1]]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, "0.9", None, True])
def test_bad_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="threshold"):
        masks.mass_mask(np.ones((1, 3), "float32"), bad)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="prune_ratio"):
        masks.uniform_mask(np.ones((1, 3), "float32"), 1.0)
    with pytest.raises(ValueError, match="rank 4"):
        masks.mass_mask(np.ones((1, 3, 3), "float32"), 0.5)
    with pytest.raises(ValueError, match="'mass' or 'uniform'"):
        masks.target_mask(np.ones((1, 3), "float32"), 0.5, "topk")


def _reference_mass_mask(scores, threshold):
    """The official rule, written with a sort: filters ranked by score (lower index first on ties)."""
    mask = np.zeros_like(scores)
    for row, sample in enumerate(scores):
        total = sample.sum()
        if total <= 0:
            continue
        order = sorted(range(len(sample)), key=lambda c: (-sample[c], c))
        cumulative = np.cumsum(np.float32(sample[order] / total))
        for rank, channel in enumerate(order):
            if cumulative[rank] - threshold <= masks.DEAD_FILTER_TOLERANCE:
                mask[row, channel] = 1.0
    return mask


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.75, 0.9, 0.97])
def test_mass_mask_matches_the_sorting_rule_with_many_ties(threshold):
    rng = np.random.default_rng(int(threshold * 100))
    # Small integer scores make ties at the boundary common.
    scores = rng.integers(0, 4, (200, 12)).astype("float32")
    expected = _reference_mass_mask(scores, threshold)
    np.testing.assert_array_equal(np.asarray(masks.mass_mask(scores, threshold)), expected)
    continuous = rng.exponential(1.0, (200, 64)).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(masks.mass_mask(continuous, threshold)), _reference_mass_mask(continuous, threshold)
    )


def _reference_margins(scores, threshold):
    """Per filter: float64 cumulative share at its rank minus (threshold + tolerance)."""
    margins = np.full(scores.shape, -np.inf)
    for row, sample in enumerate(scores.astype("float64")):
        total = sample.sum()
        if total <= 0:
            continue
        order = sorted(range(len(sample)), key=lambda c: (-sample[c], c))
        cumulative = np.cumsum(sample[order] / total)
        margins[row, order] = cumulative - threshold - masks.DEAD_FILTER_TOLERANCE
    return margins


@pytest.mark.parametrize("channels", [300, 1024])
@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.97, 0.999995])
def test_mass_mask_matches_the_sorting_rule_on_wide_layers(channels, threshold):
    # Wide layers spread over many score levels (see masks._mass_prefix); a
    # decision may differ from a sequential cumsum only within float32 rounding
    # of the boundary. r = 0.999995 leaves less than the tolerance outside, so
    # no filter crosses it.
    rng = np.random.default_rng(channels)
    heavy_tail = rng.exponential(1.0, (64, channels)) * rng.gamma(0.5, size=(1, channels))
    heavy_tail[:, rng.random(channels) < 0.1] = 0.0  # dead filters
    ties = rng.integers(0, 4, (64, channels))
    one_peak = rng.uniform(0, 1e-3, (64, channels))  # all but one filter in the lowest level
    one_peak[np.arange(64), rng.integers(0, channels, 64)] = 1.0
    for scores in (heavy_tail, ties, one_peak):
        scores = scores.astype("float32")
        got = np.asarray(masks.mass_mask(scores, threshold))
        margins = _reference_margins(scores, threshold)
        expected = (margins <= 0).astype("float32")
        undecided = np.abs(margins) < 1e-6
        np.testing.assert_array_equal(got[~undecided], expected[~undecided])
        assert undecided.mean() < 1e-3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_targets_of_mixed_precision_activations_are_computed_in_float32(dtype):
    import ml_dtypes  # installed with TensorFlow (and JAX)

    # 256 filters of scores near 600: their float16 sum (~150,000) overflows 65504, and bfloat16's
    # 8-bit mantissa cannot tell their shares apart.
    scores = np.random.default_rng(0).uniform(500, 700, (4, 256)).astype(getattr(ml_dtypes, dtype, dtype))
    exact = scores.astype("float32")
    for got, expected in ((masks.mass_mask(scores, 0.5), masks.mass_mask(exact, 0.5)),
                          (masks.uniform_mask(scores, 0.5), masks.uniform_mask(exact, 0.5))):
        assert got.dtype == "float32"
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert 0.3 < np.asarray(masks.mass_mask(scores, 0.5)).mean() < 0.6


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_mass_mask_under_xla_equals_the_graph_rule(threshold):
    """Keras compiles train steps with XLA by default on a GPU (`jit_compile="auto"`).

    XLA needs static shapes; with the crossing level's run-time top-k, 1.3% of
    the decisions on a batch like this one differed from the graph's (TF 2.21).
    """
    import tensorflow as tf

    rng = np.random.default_rng(1)
    ties = rng.integers(0, 4, (64, 96)).astype("float32")
    heavy_tail = (rng.exponential(1.0, (64, 4, 4, 256)) ** 3).astype("float32")
    for scores in (ties, heavy_tail):
        graph = tf.function(lambda x: masks.mass_mask(x, threshold))(scores)
        xla = tf.function(lambda x: masks.mass_mask(x, threshold), jit_compile=True)(scores)
        np.testing.assert_array_equal(np.asarray(xla), np.asarray(graph))
        np.testing.assert_array_equal(np.asarray(graph), np.asarray(masks.mass_mask(scores, threshold)))
