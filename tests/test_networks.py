"""Specification of the small convolutional embedders."""

import pytest
import torch

from lit_metric import ConvEmbedder
from lit_metric import PartEmbedder
from lit_metric.networks import part_rows


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


# PartEmbedder: Yi et al.'s part network.


def test_part_rows_spread_overlapping_bands_from_top_to_bottom():
    assert part_rows(128, 3, 48) == [0, 40, 80]  # the paper's three 48x48 parts of a 128x48 image
    assert part_rows(256, 4, 96) == [0, 53, 107, 160]
    assert part_rows(30, 1, 30) == [0]


@pytest.mark.parametrize(("image_size", "parts", "part_height"), [((128, 48), 3, 48), ((64, 32), 4, 24), ((24, 8), 1, 24)])
def test_part_embedder_maps_images_of_its_size_to_the_embedding(image_size, parts, part_height):
    network = PartEmbedder(3, image_size, parts, part_height, channels=(4, 8), embedding_dim=6 * parts)
    assert network(torch.rand(5, 3, *image_size)).shape == (5, 6 * parts)


def test_each_part_reaches_only_its_own_tower_unless_shared():
    torch.manual_seed(0)
    network = PartEmbedder(1, (16, 4), parts=2, part_height=8, channels=(4,), embedding_dim=4).eval()
    images = torch.rand(3, 1, 16, 4, requires_grad=True)
    network(images)[:, :2].sum().backward()  # the first part's features
    assert images.grad[:, :, :8].abs().sum() > 0 and images.grad[:, :, 8:].abs().sum() == 0
    assert len(network.towers) == 2
    assert len(PartEmbedder(1, (16, 4), 2, 8, (4,), 4, share_weights=True).towers) == 1


def test_part_embedder_has_gradients_for_every_tower():
    network = PartEmbedder(3, (32, 12), parts=3, part_height=12, channels=(4, 8), embedding_dim=12)
    network(torch.rand(4, 3, 32, 12)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


def test_parts_that_do_not_fit_the_image_are_named():
    with pytest.raises(ValueError, match=r"`part_height` must be in \[1, 128\] for images 128 rows high, got 130"):
        PartEmbedder(image_size=(128, 48), part_height=130)
    with pytest.raises(ValueError, match="`parts` x `part_height` must cover the image's 128 rows, got 2 x 48"):
        PartEmbedder(image_size=(128, 48), parts=2, part_height=48)
    with pytest.raises(ValueError, match="`parts` must be a positive integer, got 0"):
        PartEmbedder(parts=0)
    with pytest.raises(ValueError, match=r"`embedding_dim` must be a multiple of `parts` \(3\), got 128"):
        PartEmbedder(embedding_dim=128)


def test_images_of_another_size_than_the_parts_are_laid_out_for_are_named():
    with pytest.raises(ValueError, match=r"`images` must be 128x48 \(the `image_size` the parts are laid out for\)"):
        PartEmbedder()(torch.rand(2, 3, 64, 48))
