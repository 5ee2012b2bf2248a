"""`mlp`: a ReLU multilayer perceptron, the zoo's network for tables (and for flattened images).

Not in the paper; it lets tabular users start without code. He-uniform weights and zero biases, as the paper's
VGG8, since every hidden layer is followed by a ReLU.
"""

from torch import nn

from skqk.models import register_model
from skqk.models.paper_nets import initialise


@register_model("mlp")
def mlp(
    in_features: int | None = None,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    width: int = 256,
    depth: int = 2,
    widths: list[int] | None = None,
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """Linear → [BatchNorm] → ReLU → [Dropout], `depth` times `width` wide (or one layer per entry of `widths`),
    then a linear layer to `num_classes` outputs (1 for regression).

    Args:
        in_features: a table's feature columns; None: flattened images of `in_channels` x `image_size`².
        width, depth: hidden layers of equal width; ignored when `widths` is given.
        widths: the width of each hidden layer, e.g. [512, 128].
        batchnorm: BatchNorm1d after each hidden linear layer (an affine map in eval mode, as the estimator needs).
        dropout: dropout probability after each hidden ReLU (0: none).
    """
    hidden = list(widths) if widths is not None else [width] * depth
    if not hidden or min(hidden) <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"mlp needs positive hidden widths and 0 <= dropout < 1, got {hidden}, dropout {dropout}")
    sizes = [in_features or in_channels * image_size * image_size, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for w_in, w_out in zip(sizes, sizes[1:]):
        layers.append(nn.Linear(w_in, w_out))
        if batchnorm:
            layers.append(nn.BatchNorm1d(w_out))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
    return initialise(nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes)), "he_uniform")
