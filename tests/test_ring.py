"""The ring's rules on their own, without Ray: one home for both kinds of rounds."""

import pytest

from graftune.config import Config, with_overrides
from graftune.population.ring import (
    graft_records,
    grafts_in_round,
    restore_donor,
    restored_event,
    ring_before,
)


def test_the_ring_before_a_network_starts_with_its_predecessor_and_wraps():
    assert list(ring_before(0, 4)) == [3, 2, 1]
    assert list(ring_before(2, 4)) == [1, 0, 3]
    assert list(ring_before(0, 1)) == []


def test_a_diverged_network_takes_its_nearest_finite_predecessor():
    finite = {0: True, 1: False, 2: False, 3: True}
    assert restore_donor(2, 4, finite.get) == 0  # 1 diverged too: skipped
    assert restore_donor(1, 4, finite.get) == 0
    assert restore_donor(0, 4, lambda j: j != 3) == 2
    assert restored_event(2, 0) == "network 2 diverged; restored from network 0"


def test_a_diverged_network_is_never_its_own_donor():
    asked = []

    def finite(j):
        asked.append(j)
        return False

    with pytest.raises(RuntimeError, match="network 1 diverged .* lower --lr"):
        restore_donor(1, 3, finite)
    assert sorted(asked) == [0, 2]


def test_grafts_happen_from_the_start_round_and_never_after_the_last():
    config = with_overrides(Config(), {"start_round": 2})
    assert [grafts_in_round(config, r, 4) for r in range(1, 5)] == [False, True, True, False]
    none = with_overrides(Config(), {"source": "none"})
    assert not any(grafts_in_round(none, r, 4) for r in range(1, 5))


def test_graft_records_carry_their_round_and_receiver():
    rows = [{"unit": "conv1", "alpha": 0.5}]
    assert graft_records(3, 1, rows) == [{"round": 3, "network": 1, "unit": "conv1", "alpha": 0.5}]
