"""Forgetting and backward transfer as Avalanche defines them, checked on hand-built accuracy matrices."""

import pytest

from skqk.incremental import average_accuracy, average_forgetting, backward_transfer, forgetting, stream_summary

# matrix[i][j]: accuracy on chunk j after training on chunk i (entries right of the diagonal are ignored)
MATRIX = [
    [0.90, 0.10, 0.10],
    [0.70, 0.80, 0.15],
    [0.60, 0.75, 0.85],
]


def test_forgetting_is_first_accuracy_minus_current_for_every_earlier_chunk():
    assert forgetting(MATRIX) == pytest.approx([0.90 - 0.60, 0.80 - 0.75])
    assert forgetting(MATRIX, step=1) == pytest.approx([0.90 - 0.70])
    assert forgetting(MATRIX, step=0) == []


def test_average_forgetting_and_backward_transfer_leave_out_the_chunk_just_learnt():
    assert average_forgetting(MATRIX) == pytest.approx((0.30 + 0.05) / 2)
    assert backward_transfer(MATRIX) == pytest.approx(-(0.30 + 0.05) / 2)
    assert average_forgetting(MATRIX, step=1) == pytest.approx(0.20)
    assert average_forgetting(MATRIX, step=0) is None and backward_transfer(MATRIX, step=0) is None
    assert average_accuracy(MATRIX) == pytest.approx((0.60 + 0.75 + 0.85) / 3)
    assert average_accuracy(MATRIX, step=0) == pytest.approx(0.90)


def test_positive_backward_transfer_when_later_chunks_help_earlier_ones():
    helped = [[0.50], [0.60, 0.70], [0.65, 0.80, 0.90]]

    assert average_forgetting(helped) == pytest.approx(-(0.15 + 0.10) / 2)
    assert backward_transfer(helped) == pytest.approx((0.15 + 0.10) / 2)  # Lopez-Paz & Ranzato's BWT


def test_stream_summary_lists_every_step():
    rows = stream_summary(MATRIX)

    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[1]["accuracies"] == [0.70, 0.80]
    assert rows[2]["average_forgetting"] == pytest.approx(0.175)
    assert rows[0]["backward_transfer"] is None


@pytest.mark.parametrize(
    ("matrix", "step", "message"),
    [([], None, "empty"), ([[0.5], [0.5]], None, "row 1"), (MATRIX, 3, "outside"), (MATRIX, -1, "outside")],
)
def test_malformed_matrices_are_refused(matrix, step, message):
    with pytest.raises(ValueError, match=message):
        average_forgetting(matrix, step)


def test_an_error_matrix_forgets_by_the_increase_of_earlier_chunks_error():
    rmse = [[1.0], [1.5, 0.8], [1.2, 1.1, 0.9]]  # RMSE on chunk j after chunk i: lower is better

    assert forgetting(rmse, higher_is_better=False) == pytest.approx([1.2 - 1.0, 1.1 - 0.8])
    assert backward_transfer(rmse, higher_is_better=False) == pytest.approx(-(0.2 + 0.3) / 2)
    last = stream_summary(rmse, metric="rmse")[-1]
    assert last["rmse_per_chunk"] == [1.2, 1.1, 0.9] and last["average_rmse"] == pytest.approx(3.2 / 3)
    assert last["average_forgetting"] == pytest.approx(0.25)
