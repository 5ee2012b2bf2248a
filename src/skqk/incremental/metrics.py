"""Forgetting and transfer over a stream of chunks, from the accuracy matrix, as Avalanche defines them.

``matrix[i][j]`` is the accuracy on experience (chunk) j's evaluation samples after training on chunk i, for
j <= i (later entries, if present, are ignored). Chunk 0 is the pre-training.

* forgetting of chunk j after step i: ``matrix[j][j] - matrix[i][j]``, the accuracy when chunk j was first
  learnt minus the accuracy now (Avalanche `ExperienceForgetting`: first value minus last value);
* average forgetting after step i: its mean over the chunks learnt before step i, j < i (Avalanche
  `StreamForgetting`; the chunk just learnt has no forgetting yet and is left out);
* backward transfer: the negative forgetting (Avalanche `forgetting_to_bwt`), i.e. Lopez-Paz & Ranzato's
  ``BWT = mean_{j<T} (R[T][j] - R[j][j])`` at the last step T: positive when new chunks helped the old ones.

For an error (RMSE, with ``higher_is_better=False``) the signs turn: forgetting is the increase of an earlier
chunk's error since it was learnt, ``matrix[i][j] - matrix[j][j]``, and backward transfer its decrease.
"""

from __future__ import annotations

from collections.abc import Sequence


def _checked(matrix: Sequence[Sequence[float]], step: int | None) -> int:
    if not matrix:
        raise ValueError("the accuracy matrix is empty")
    step = len(matrix) - 1 if step is None else step
    if not 0 <= step < len(matrix):
        raise ValueError(f"step {step} is outside the accuracy matrix's {len(matrix)} rows")
    for i in range(step + 1):
        if len(matrix[i]) < i + 1:
            raise ValueError(f"row {i} of the accuracy matrix needs accuracies of chunks 0..{i}")
    return step


def forgetting(
    matrix: Sequence[Sequence[float]], step: int | None = None, higher_is_better: bool = True
) -> list[float]:
    """Forgetting of every chunk j < `step` (default: the last row) after training on chunk `step`: the loss of
    accuracy, or (``higher_is_better=False``) the increase of error."""
    step = _checked(matrix, step)
    sign = 1 if higher_is_better else -1
    return [sign * (matrix[j][j] - matrix[step][j]) for j in range(step)]


def average_forgetting(
    matrix: Sequence[Sequence[float]], step: int | None = None, higher_is_better: bool = True
) -> float | None:
    """Mean forgetting over the chunks learnt before `step`; None at step 0 (nothing learnt before)."""
    values = forgetting(matrix, step, higher_is_better)
    return sum(values) / len(values) if values else None


def backward_transfer(
    matrix: Sequence[Sequence[float]], step: int | None = None, higher_is_better: bool = True
) -> float | None:
    """Backward transfer after `step`: the negative average forgetting; None at step 0."""
    value = average_forgetting(matrix, step, higher_is_better)
    return None if value is None else -value


def average_accuracy(matrix: Sequence[Sequence[float]], step: int | None = None) -> float:
    """Mean accuracy over every chunk seen so far, 0..`step`, after training on chunk `step`."""
    step = _checked(matrix, step)
    return sum(matrix[step][: step + 1]) / (step + 1)


def stream_summary(matrix: Sequence[Sequence[float]], metric: str = "accuracy") -> list[dict]:
    """Per step: the row of the matrix and the three summaries (what `metrics.jsonl` records). `metric` names what
    the matrix holds: "accuracy", or an error such as "rmse" (lower is better; keys ``rmse_per_chunk``,
    ``average_rmse``)."""
    higher = metric == "accuracy"
    row = "accuracies" if higher else f"{metric}_per_chunk"
    return [
        {
            "step": i,
            row: list(matrix[i][: i + 1]),
            f"average_{metric}": average_accuracy(matrix, i),
            "average_forgetting": average_forgetting(matrix, i, higher),
            "backward_transfer": backward_transfer(matrix, i, higher),
        }
        for i in range(len(matrix))
    ]
