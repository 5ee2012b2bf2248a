"""Evaluation of a QK run from the frozen selector's recorded validation patterns (`skqk.pipeline.validation`):
the same metrics as the live selector pass, recorded again after an SK refresh."""

import copy

import pytest
import torch
from pipeline_helpers import make_dataset, read_metrics, tiny_models  # noqa: F401  (fixture: the test models)

from skqk import decouple, models
from skqk.decoupled import DecoupledModel
from skqk.estimator import mask_sites
from skqk.pipeline.loop import evaluate, validation_indices
from skqk.pipeline.retrain import for_step
from skqk.pipeline.validation import RecordedPatterns, RecordedValidation


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))[2]


def decoupled_tiny(seed: int) -> DecoupledModel:
    torch.manual_seed(seed)
    return DecoupledModel(*decouple(models.build("tiny").eval()))


def test_recorded_patterns_are_the_live_selector_pass_bit_for_bit(data):
    decoupled = decoupled_tiny(0)
    indices = validation_indices(data, 20)
    recorded = RecordedPatterns(decoupled.selector, data, indices, batch_size=7)  # batches cut across reads
    idx = indices.flip(0)[:13]
    assert recorded.read(idx) == decoupled.selector(data.inputs(data.test, idx))
    with pytest.raises(ValueError, match="not recorded"):
        recorded.read(torch.tensor([int(torch.isin(torch.arange(len(data.test)), indices, invert=True).nonzero()[0])]))


def test_recorded_validation_gives_the_live_selectors_metrics_and_records_again_after_a_refresh(data):
    decoupled = decoupled_tiny(0)
    masks = mask_sites(decoupled.estimator)
    prepare = lambda p: for_step(p, masks, torch.float32, torch.channels_last)  # noqa: E731
    validation = RecordedValidation(decoupled, data, 0, prepare)
    # equal, not close: the same batches through the same operations, the gates multiplying by the same 0 and 1
    assert validation() == evaluate(decoupled, data)
    first = validation.recorded
    assert validation() == evaluate(decoupled, data) and validation.recorded is first  # recorded once
    decoupled.selector = decoupled_tiny(1).selector  # what an SK refresh installs
    refreshed = validation()
    assert validation.recorded is not first and validation.recorded.fingerprint != first.fingerprint
    assert refreshed == evaluate(decoupled, data)


def test_for_step_hands_relu_gates_masks_of_the_step_dtype_in_the_activations_layout(data):
    decoupled = decoupled_tiny(0)
    x = data.inputs(data.test, torch.arange(6))
    pattern = decoupled.selector(x)
    ready = for_step(pattern, mask_sites(decoupled.estimator), torch.float32, torch.channels_last)
    conv = ready["1"]
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(conv.bool(), pattern["1"]) and ready["5"].dtype == torch.float32
    assert torch.equal(decoupled.estimator(x, ready), decoupled.estimator(x, pattern))


def test_mask_sites_are_the_sites_only_relu_gates_multiply_by():
    torch.manual_seed(0)
    _, live = decouple(models.build("tiny").eval())
    _, frozen = decouple(copy.deepcopy(models.build("tiny")).eval(), pooling="frozen")
    assert mask_sites(live) == {"1", "5"}
    assert mask_sites(frozen) == {"5"}  # the conv's ReLU is fused with the pool gate, which gathers its states
