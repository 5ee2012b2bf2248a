import torch

from skqk.data import Dataset, ImageData


def test_a_constant_channel_normalises_to_zero_not_nan():
    images = torch.zeros(4, 2, 3, 3, dtype=torch.uint8)
    images[:, 0] = torch.arange(4, dtype=torch.uint8).view(4, 1, 1) * 60  # varies
    images[:, 1] = 128  # constant: std 0
    data = ImageData(images, torch.zeros(4, dtype=torch.int64), ["a"])
    dataset = Dataset.from_splits(data, data, "test")
    x = dataset.normalize(images)
    assert torch.isfinite(x).all()
    assert torch.equal(x[:, 1], torch.zeros(4, 3, 3))
    torch.testing.assert_close(x[:, 0].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
