"""Routing analytics: Jensen-Shannon divergence and expert specialisation on hand-made counts."""

import numpy as np
import pytest

from lingjax.evaluate.routing import RoutingStats, js_divergence


def test_js_divergence_hand_cases():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert js_divergence(p, p) == pytest.approx(0.0)
    assert js_divergence(p, np.array([0.0, 0.0, 0.5, 0.5])) == pytest.approx(1.0)  # disjoint
    # p vs q = (1, 0, 0, 0): m = (.75, .25, 0, 0); KL(p||m) = .5 log2(.5/.75) + .5 log2(2),
    # KL(q||m) = log2(1/.75).
    q = np.array([1.0, 0.0, 0.0, 0.0])
    want = (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(2) + np.log2(1 / 0.75)) / 2
    assert js_divergence(p, q) == pytest.approx(want)


def test_activation_divergence_and_specialisation_from_counts():
    # One MoE layer, 3 experts. Domain a uses experts 0 and 1 evenly; b uses 1 and 2 evenly
    # with twice the tokens (shares, not counts, decide).
    stats = RoutingStats(
        ("a", "b"),
        {"a": np.array([[10.0, 10.0, 0.0]]), "b": np.array([[0.0, 20.0, 20.0]])},
        {"a": 10, "b": 20},
    )
    np.testing.assert_allclose(stats.activation["a"], [[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(stats.activation["b"], [[0.0, 0.5, 0.5]])
    # Expert 0 only a, expert 2 only b, expert 1 both alike.
    np.testing.assert_allclose(stats.specialisation, [[1.0, 0.5, 1.0]])
    d = stats.divergence
    assert d[0, 0] == d[1, 1] == 0 and d[0, 1] == d[1, 0] == pytest.approx(0.5)
    assert stats.as_dict()["divergence"] == d.tolist()
