import torch

from skqk.data import Dataset, ImageData, content_fingerprint


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


def test_fingerprint_changes_with_any_pixel_label_order_or_class_name():
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    labels = torch.tensor([0, 1, 0, 1])

    def fingerprint(images=images, labels=labels, classes=("a", "b")) -> str:
        test = ImageData(images[:2], labels[:2], list(classes))
        return Dataset.from_splits(ImageData(images, labels, list(classes)), test, "any").fingerprint

    one_pixel, one_label = images.clone(), labels.clone()
    one_pixel[3, 2, 1, 1] += 1
    one_label[0] = 1
    variants = [fingerprint(one_pixel), fingerprint(labels=one_label), fingerprint(images.flip(0), labels.flip(0))]
    variants.append(fingerprint(classes=("a", "c")))

    assert fingerprint() == fingerprint(images.clone(), labels.clone())  # content, not identity
    train, test = ImageData(images, labels, ["a", "b"]), ImageData(images[:2], labels[:2], ["a", "b"])
    assert fingerprint() == content_fingerprint(train, test)
    assert len({fingerprint(), *variants}) == 5
