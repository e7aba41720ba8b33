import torch

from tunesmith.data.batching import collate, epoch_order, micro_batches
from tunesmith.data.tokenize import IGNORE, Tokenized


def test_epoch_order_is_a_deterministic_partition():
    order = epoch_order(10, 4, seed=3, epoch=1)
    assert [len(b) for b in order] == [4, 4, 2]
    assert sorted(i for b in order for i in b) == list(range(10))
    assert order == epoch_order(10, 4, seed=3, epoch=1)
    assert order != epoch_order(10, 4, seed=3, epoch=2)


def test_micro_batches_respect_the_token_budget():
    lengths = [10, 50, 30, 30, 5, 60]
    groups = micro_batches(list(range(6)), lengths, max_tokens=100)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) * max(lengths[i] for i in g) <= 100 or len(g) == 1 for g in groups)


def test_micro_batch_keeps_an_oversized_example_alone():
    assert micro_batches([0, 1], [500, 10], max_tokens=100) == [[0], [1]]


def test_collate_pads_right_and_masks():
    b = collate([Tokenized([1, 2, 3], [IGNORE, 2, 3]), Tokenized([4], [4])], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b.labels[1].tolist() == [4, IGNORE, IGNORE]
    assert b.n_trained == 3 and b.n_tokens == 4 and b.input_ids.dtype == torch.long
