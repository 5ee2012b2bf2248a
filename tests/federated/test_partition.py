"""Client partitions: disjoint shards covering the samples; IID shards mirror the class proportions, Dirichlet
shards are skewed the more the smaller alpha is; the same seed gives the same split."""

import pytest
import torch

from skqk.federated.partition import dirichlet, iid, partition

CLASSES = 10


@pytest.fixture
def split():
    labels = torch.arange(5000) % CLASSES  # balanced classes, 500 each
    labels = labels[torch.randperm(len(labels))]
    return torch.randperm(5000)[:4000], labels


def class_shares(shard, labels):
    return torch.bincount(labels[shard], minlength=CLASSES).double() / len(shard)


def assert_covers(shards, indices):
    joined = torch.cat(shards)
    assert len(joined) == len(indices) == len(joined.unique())
    assert torch.equal(joined.sort().values, indices.sort().values)


def test_iid_shards_mirror_the_class_proportions(split):
    indices, labels = split
    shards = iid(indices, 4, seed=3)
    assert_covers(shards, indices)
    assert {len(s) for s in shards} == {1000}
    overall = class_shares(indices, labels)
    for shard in shards:  # 1,000 samples per shard: a class share is within a few points of the overall one
        assert (class_shares(shard, labels) - overall).abs().max() < 0.05
    assert all(torch.equal(a, b) for a, b in zip(shards, iid(indices, 4, seed=3)))
    assert not torch.equal(shards[0], iid(indices, 4, seed=4)[0])
    assert [len(s) for s in iid(indices[:10], 3)] == [4, 3, 3]


def test_dirichlet_skew_follows_alpha(split):
    indices, labels = split
    skewed = dirichlet(indices, labels, 4, alpha=0.1, seed=0)
    near_iid = dirichlet(indices, labels, 4, alpha=1000.0, seed=0)
    for shards in (skewed, near_iid):
        assert_covers(shards, indices)
        assert min(len(s) for s in shards) >= 10
    overall = class_shares(indices, labels)
    for shard in near_iid:
        assert (class_shares(shard, labels) - overall).abs().max() < 0.05
    # alpha = 0.1: on average a client's largest class makes up most of its data (IID: about a tenth)
    dominant = torch.stack([class_shares(s, labels).max() for s in skewed]).mean()
    assert dominant > 0.4, dominant
    # every class is split among the clients: the shards' class counts add up to the class totals
    totals = sum(torch.bincount(labels[s], minlength=CLASSES) for s in skewed)
    assert torch.equal(totals, torch.bincount(labels[indices], minlength=CLASSES))
    assert all(torch.equal(a, b) for a, b in zip(skewed, dirichlet(indices, labels, 4, alpha=0.1, seed=0)))


def test_bad_partitions_are_refused(split):
    indices, labels = split
    with pytest.raises(ValueError, match="alpha must be positive"):
        dirichlet(indices, labels, 4, alpha=0.0)
    with pytest.raises(ValueError, match="among 0 clients"):
        iid(indices, 0)
    with pytest.raises(ValueError, match="10 samples each"):
        dirichlet(indices[:30], labels, 4, alpha=0.1)
    with pytest.raises(ValueError, match="'iid' or 'dirichlet'"):
        partition(indices, labels, 4, "pathological")
