import pytest
import torch

from skqk import Pattern


def small_pattern():
    return Pattern(
        {
            "a": torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool),
            "b": torch.tensor([[[1, 1], [0, 0]], [[1, 0], [1, 0]]], dtype=torch.bool),
            "pool": torch.tensor([[3, 0], [1, 2]], dtype=torch.uint8),
        }
    )


def test_flips_is_zero_for_identical_patterns():
    p = small_pattern()
    flips = p.flips(small_pattern())
    assert flips.overall == 0.0 and set(flips.per_site.values()) == {0.0}


def test_flips_matches_hand_count():
    p, q = small_pattern(), small_pattern()
    q["a"][0, 1] = True  # 1 of 8 states of site a
    q["b"][1, 1, 0] = False  # 1 of 8 states of site b
    q["b"][0, 0, 0] = False
    q["pool"][1, 0] = 0  # 1 of 4 switches
    flips = p.flips(q)
    assert flips.per_site == {"a": 1 / 8, "b": 2 / 8, "pool": 1 / 4}
    assert flips.overall == pytest.approx(4 / 20)


def test_counts_and_active_fraction():
    p = small_pattern()
    assert p.batch_size == 2 and p.gate_bits_per_sample == 8 and p.switches_per_sample == 2
    assert p.gate_sites == ["a", "b"] and p.switch_sites == ["pool"]
    assert p.active_fraction() == {"a": 4 / 8, "b": 4 / 8}


def test_batch_slicing_and_concatenation_round_trip():
    p = small_pattern()
    assert Pattern.cat([p[:1], p[1:]]) == p
    assert p[torch.tensor([1, 0])]["pool"].tolist() == [[1, 2], [3, 0]]
    assert p[1]["a"].tolist() == [[False, False, True, False]] and p[-1].batch_size == 1


def test_bad_inputs_are_refused_with_clear_messages():
    p = small_pattern()
    with pytest.raises(ValueError, match="did you mean 'pool'"):
        p["poll"]
    with pytest.raises(ValueError, match="batch size"):
        Pattern({"a": torch.zeros(2, 3, dtype=torch.bool), "b": torch.zeros(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool"):
        Pattern({"a": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="different sites"):
        p.flips(Pattern({"a": p["a"]}))
