"""The engine's cache layer appends in place and always holds what ``torch.cat`` would."""

import torch

from handlers.generation.kv_cache import SPARE_COLUMNS, GrowingLayer, growing_cache


def columns(n: int, rows: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, 2, n, 4), torch.randn(rows, 2, n, 4)


def test_appends_equal_concatenation_past_the_spare_columns_and_copy_only_when_full():
    layer, keys, values = GrowingLayer(), *columns(5)
    layer.update(keys, values)
    buffers = set()
    for _ in range(3 * SPARE_COLUMNS):
        new_keys, new_values = columns(1)
        got_keys, got_values = layer.update(new_keys, new_values)
        keys, values = torch.cat([keys, new_keys], dim=2), torch.cat([values, new_values], dim=2)
        assert torch.equal(got_keys, keys) and torch.equal(got_values, values)
        buffers.add(layer._key_buffer.data_ptr())
    assert layer.get_seq_length() == 5 + 3 * SPARE_COLUMNS
    assert len(buffers) <= 4  # a new buffer each SPARE_COLUMNS appends, not one per append


def test_a_cache_the_engine_replaced_or_cropped_is_appended_to_as_it_now_is():
    layer, keys, values = GrowingLayer(), *columns(6)
    layer.update(keys, values)
    layer.update(*columns(1))
    layer.keys, layer.values = layer.keys.index_select(0, torch.tensor([0, 2])), layer.values[[0, 2]]  # rows left
    kept_keys, kept_values = layer.keys.clone(), layer.values.clone()
    new_keys, new_values = columns(1, rows=2)
    got_keys, got_values = layer.update(new_keys, new_values)
    assert torch.equal(got_keys, torch.cat([kept_keys, new_keys], dim=2))
    assert torch.equal(got_values, torch.cat([kept_values, new_values], dim=2))
    layer.crop(-2)
    new_keys, new_values = columns(1, rows=2)
    got_keys, _ = layer.update(new_keys, new_values)
    assert torch.equal(got_keys, torch.cat([kept_keys[:, :, :-1], new_keys], dim=2))


def test_every_layer_of_a_new_cache_grows_in_place():
    from transformers import GPT2Config

    cache = growing_cache(GPT2Config(n_layer=3, n_embd=8, n_head=2))
    assert len(cache.layers) == 3 and all(type(layer) is GrowingLayer for layer in cache.layers)
