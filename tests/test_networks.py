"""Specification of the small convolutional embedders."""

import pytest
import torch

from lit_metric import ConvEmbedder


@pytest.mark.parametrize(("shape", "channels"), [((1, 8, 8), (32, 64, 128)), ((1, 56, 46), (16, 32, 64, 128)), ((3, 32, 16), (8,))])
def test_any_image_size_maps_to_the_embedding_dimension(shape, channels):
    network = ConvEmbedder(in_channels=shape[0], embedding_dim=24, channels=channels)
    assert network(torch.rand(5, *shape)).shape == (5, 24)


def test_wrong_image_shape_is_named():
    with pytest.raises(ValueError, match=r"`images` must have shape \(N, 1, H, W\), got shape \(5, 3, 8, 8\)"):
        ConvEmbedder(in_channels=1)(torch.rand(5, 3, 8, 8))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64])
def test_images_of_another_dtype_than_the_weights_are_named(dtype):
    with pytest.raises(ValueError, match=f"`images` must have the network's dtype torch.float32, got {dtype}"):
        ConvEmbedder()(torch.zeros(2, 1, 8, 8, dtype=dtype))


def test_channels_must_name_a_block():
    with pytest.raises(ValueError, match="`channels` must name at least one block"):
        ConvEmbedder(channels=())
