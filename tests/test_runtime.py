"""Small runtime pieces the profile pass replaced: the seeded global RNG and the confusion matrix."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from fedsim.metrics import clean_counts, confusion_matrix, eval_batch_size, ordered_sum, shard_batches
from fedsim.runtime.seeding import seeded_global_rng


def test_seeded_global_rng_gives_fork_rng_streams_and_restores_the_caller_state():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(3)
    with seeded_global_rng(42):
        ours = torch.rand(5), torch.nn.functional.dropout(torch.ones(20), 0.5)
    after = torch.rand(3)
    with torch.random.fork_rng():
        torch.manual_seed(42)
        reference = torch.rand(5), torch.nn.functional.dropout(torch.ones(20), 0.5)
    torch.manual_seed(123)
    torch.rand(3)
    assert torch.equal(ours[0], reference[0]) and torch.equal(ours[1], reference[1])
    assert torch.equal(after, torch.rand(3))  # the caller's stream continues as if untouched
    assert not torch.equal(before, ours[0][:3])


def test_seeded_global_rng_restores_after_an_exception():
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    try:
        with seeded_global_rng(1):
            torch.rand(100)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.equal(torch.rand(4), expected)


def test_confusion_matrix_equals_torchmetrics():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 7, (500,), generator=gen)
    target = torch.randint(0, 7, (500,), generator=gen)
    pred[:3] = 6  # a class absent from target still gets its column
    expected = multiclass_confusion_matrix(pred, target, 7).float()
    assert torch.equal(confusion_matrix(pred, target, 7), expected)


def test_clean_counts_does_not_depend_on_the_batch_size():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x, y = torch.rand(70, 1, 4, 4), torch.randint(0, 3, (70,))
    conf_a, loss_a = clean_counts(model, x, y, lambda t: t, 3, batch_size=8)
    conf_b, loss_b = clean_counts(model, x, y, lambda t: t, 3)
    assert torch.equal(conf_a, conf_b) and conf_a.sum() == 70
    assert loss_a.shape == (9,) and loss_b.shape == (1,)
    assert torch.allclose(loss_a.sum(), loss_b.sum(), rtol=1e-5)
    assert eval_batch_size(x) == 256


def test_shard_batches_give_every_sample_once_in_the_same_batch_for_any_world_size():
    one = shard_batches(70, 8)
    for world in (2, 3, 4):
        shards = [shard_batches(70, 8, r, world) for r in range(world)]
        merged = sorted((b for s in shards for b in s), key=lambda b: b.start)
        assert merged == one  # the same batches, only distributed over the ranks
        assert [b.start // 8 for b in shards[1]] == list(range(1, 9, world))


def test_ordered_sum_adds_in_order_in_the_values_dtype():
    v = torch.tensor([1e8, 1.0, -1e8, 1.0])
    assert ordered_sum(v).item() == 1.0  # (1e8 + 1) rounds to 1e8 in float32, then + (-1e8) + 1
