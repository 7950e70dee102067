"""Specification of the embedding networks: the small CNNs and the timm backbones."""

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch

from lit_metric import BackboneEmbedder, ConvEmbedder, PartEmbedder
from lit_metric.networks import GeM, part_rows


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


# BackboneEmbedder: any timm model, pooled, with an embedding head.


def tiny_backbone(**kwargs):
    """timm's ``test_resnet`` (96 features) on 32x32 images, random weights."""
    torch.manual_seed(0)
    return BackboneEmbedder(**{"name": "test_resnet", "embedding_dim": 16, "image_size": (32, 32), **kwargs})


@pytest.mark.parametrize("pooling", ["avg", "gem"])
@pytest.mark.parametrize(("head", "embedding_dim", "width"), [("bnneck", 16, 16), ("linear", 16, 16), ("none", None, 96)])
def test_a_timm_name_maps_rgb_images_to_the_embedding(pooling, head, embedding_dim, width):
    network = tiny_backbone(pooling=pooling, head=head, embedding_dim=embedding_dim)
    assert network(torch.rand(4, 3, 32, 32)).shape == (4, width)
    assert network.embedding_dim == width


def test_the_bnneck_head_is_a_bias_free_linear_map_and_a_batch_norm():
    head = tiny_backbone().head
    assert [type(layer) for layer in head] == [torch.nn.Linear, torch.nn.BatchNorm1d] and head[0].bias is None


def test_head_none_embeds_by_the_pooled_backbone_features():
    network = tiny_backbone(head="none", embedding_dim=None).eval()
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(network(images), network.backbone(images).mean(dim=(2, 3)))


def test_transformer_tokens_are_pooled_like_positions():
    network = BackboneEmbedder("test_vit", head="none", embedding_dim=None).eval()
    images = torch.rand(2, 3, 160, 160)
    torch.testing.assert_close(network(images), network.backbone(images).mean(dim=1))


def test_gem_is_average_pooling_at_p_1_nears_max_pooling_for_large_p_and_learns_p():
    features = torch.rand(2, 5, 4, 4) + 0.1
    torch.testing.assert_close(GeM(p=1.0)(features), features.mean(dim=(2, 3)))
    torch.testing.assert_close(GeM(p=200.0)(features), features.amax(dim=(2, 3)), rtol=0.02, atol=0)
    gem = GeM()
    gem(features).sum().backward()
    assert gem.p.grad is not None


def test_preprocessing_comes_from_timm_s_pretrained_config():
    network = BackboneEmbedder("resnet50", embedding_dim=8)
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert network.preprocessing == {"channels": 3, "image_size": [224, 224], **imagenet}
    people = BackboneEmbedder("resnet50", embedding_dim=8, image_size=(256, 128))
    assert people.preprocessing == {"channels": 3, "image_size": [256, 128], **imagenet}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_weights_file_sets_the_backbone_without_its_classifier(test_resnet_weights, suffix, tmp_path):
    state = torch.load(test_resnet_weights, weights_only=True)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    network = tiny_backbone(weights=str(path))
    assert "fc.weight" in state
    for key, value in network.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_weights_that_do_not_fit_name_the_first_mismatched_keys_and_shapes(test_resnet_weights, tmp_path):
    state = torch.load(test_resnet_weights, weights_only=True)
    state["conv1.0.weight"] = state["conv1.0.weight"][:, :2]
    state["extra.weight"] = torch.zeros(1)
    del state["bn1.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="`weights` file .*bad.pt.* does not fit the backbone 'test_resnet'") as error:
        tiny_backbone(weights=str(tmp_path / "bad.pt"))
    message = str(error.value)
    assert "1 missing keys: ['bn1.weight']" in message
    assert "1 unexpected keys: ['extra.weight']" in message
    assert "conv1.0.weight: (16, 2, 3, 3) in the file, (16, 3, 3, 3) in the model" in message


def test_weights_of_another_model_list_the_first_five_of_each_kind(test_resnet_weights):
    with pytest.raises(ValueError, match=r"missing keys: \[.*\] \.\.\.; \d+ unexpected keys"):
        BackboneEmbedder("test_convnext", weights=str(test_resnet_weights))


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("missing.pt", None, FileNotFoundError, "`weights` file .*missing.pt.* does not exist"),
        ("weights.npz", b"", ValueError, "`weights` must be a .pt, .pth or .safetensors file"),
        ("model.pt", {"fc": 1.0}, ValueError, "`weights` file .* must hold a state dict"),
    ],
)
def test_a_weights_file_that_is_no_state_dict_is_named(name, content, error, match, tmp_path):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(error, match=match):
        tiny_backbone(weights=str(path))


def test_an_unknown_timm_name_is_named_with_close_names():
    with pytest.raises(ValueError, match=r"`name` 'resnet5' is not a timm model; close names: \['resnet50'"):
        BackboneEmbedder("resnet5")


def test_pretrained_without_network_access_suggests_a_weights_file(monkeypatch):
    # Offline mode fails at once, as a machine without network fails after the hub's retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="`pretrained`: the weights of 'test_resnet' could not be downloaded") as error:
        BackboneEmbedder("test_resnet", pretrained=True)
    assert "`weights:` with `pretrained: false`" in str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pretrained": True, "weights": "w.pt"}, "give `pretrained: true` or a `weights` file, not both"),
        ({"pooling": "max"}, "`pooling` must be 'avg' or 'gem', got 'max'"),
        ({"head": "mlp"}, "`head` must be 'bnneck', 'linear' or 'none', got 'mlp'"),
        ({"head": "none"}, "`embedding_dim` must be None or the backbone's 96 features with head 'none'"),
        ({"embedding_dim": 0}, "`embedding_dim` must be a positive integer with head 'bnneck', got 0"),
        ({"pooling": "gem", "gem_p": 0.0}, "`gem_p` must be > 0, got 0.0"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_backbone(**kwargs)


def test_images_that_are_not_rgb_are_named():
    with pytest.raises(ValueError, match=r"`images` must have shape \(N, 3, H, W\), got shape \(2, 1, 32, 32\)"):
        tiny_backbone()(torch.rand(2, 1, 32, 32))
