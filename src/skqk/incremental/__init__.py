"""Incremental re-training on data arriving in chunks: the chunks, and forgetting and transfer over them.

The paper's conclusion names the goal: "re-training with new samples without requiring full dataset processing".
`chunks` says which samples each chunk brings and which test samples measure it; `metrics` turns the resulting
accuracy matrix into average forgetting and backward transfer.
"""

from skqk.incremental.chunks import chunk_indices, experience_eval_indices
from skqk.incremental.metrics import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting,
    stream_summary,
)

__all__ = [
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "chunk_indices",
    "experience_eval_indices",
    "forgetting",
    "stream_summary",
]
