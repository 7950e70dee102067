"""Specification of RetrievalPictures: after validation it writes a retrieval grid and a 2-D projection of the
validation embeddings as PNG files, with no logger needed; the neighbours it shows are the exact cosine neighbours
under the retrieval metric's rules, framed green when they share the query's label and red otherwise."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_rgba
from PIL import Image

from lit_metric import ConvEmbedder, MetricLearningModule
from lit_metric.callbacks.pictures import (
    RetrievalPictures,
    draw_projection,
    draw_retrieval_grid,
    project_2d,
    retrieval_examples,
)
from lit_metric.data import DigitsDataModule
from lit_metric.data.loaders import eval_loader


@pytest.fixture(scope="module")
def pictures_folder(tmp_path_factory):
    """A 2-epoch fit without any logger that draws every second epoch; the folder of its pictures."""
    root = tmp_path_factory.mktemp("pictures")
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=root,
        callbacks=[RetrievalPictures(num_queries=4, k=3, every_n_epochs=2)],
    )
    trainer.fit(MetricLearningModule(ConvEmbedder(1, 16, channels=[8, 16])), DigitsDataModule())
    return root / "pictures"


def test_without_a_logger_the_pictures_of_every_nth_epoch_go_to_the_root_dir(pictures_folder):
    # Not after the sanity check, not after epoch 0: only after the second epoch (index 1).
    assert sorted(path.name for path in pictures_folder.iterdir()) == [
        "embedding_projection-epoch001.png",
        "retrieval_grid-epoch001.png",
    ]


def test_the_last_epoch_is_drawn_even_off_the_cycle(tmp_path):
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
        callbacks=[RetrievalPictures(num_queries=2, k=2, every_n_epochs=5)],
    )
    trainer.fit(MetricLearningModule(ConvEmbedder(1, 8, channels=[8])), DigitsDataModule())
    assert (tmp_path / "pictures" / "retrieval_grid-epoch000.png").is_file()


class FirstLoaderValidation(MetricLearningModule):
    """Scores the first of several validation loaders and only embeds the others."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return super().validation_step(batch, batch_idx) if dataloader_idx == 0 else self.embed(batch["image"])


class TwoValidationLoaders(DigitsDataModule):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict

    def val_dataloader(self):
        loaders = [eval_loader(self.holdout_set, 256, 0), eval_loader(self.train_set, 256, 0)]
        return dict(zip(["holdout", "train"], loaders)) if self.as_dict else loaders


@pytest.mark.parametrize("as_dict", [False, True])
def test_several_validation_loaders_in_a_list_or_a_dict_draw_the_first(tmp_path, as_dict):
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        default_root_dir=tmp_path, callbacks=[RetrievalPictures(num_queries=2, k=2)],
    )
    trainer.fit(FirstLoaderValidation(ConvEmbedder(1, 8, channels=[8])), TwoValidationLoaders(as_dict))
    assert (tmp_path / "pictures" / "retrieval_grid-epoch000.png").is_file()


class SilentValidation(MetricLearningModule):
    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)


def test_a_validation_step_that_returns_no_embeddings_is_named(tmp_path):
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
        callbacks=[RetrievalPictures(num_queries=2, k=2)],
    )
    with pytest.raises(ValueError, match="needs `validation_step` to return the batch's \\(B, D\\) embeddings"):
        trainer.fit(SilentValidation(ConvEmbedder(1, 8, channels=[8])), DigitsDataModule())


def test_the_grid_has_a_row_per_query_and_a_column_per_neighbour(pictures_folder):
    with Image.open(pictures_folder / "retrieval_grid-epoch001.png") as grid:
        width, height = grid.size
    # 1 query + 3 neighbours across, 4 queries down; each cell about 130 x 140 pixels.
    assert 4 * 100 < width < 4 * 160 and 4 * 100 < height < 4 * 180
    with Image.open(pictures_folder / "embedding_projection-epoch001.png") as projection:
        assert projection.size == (600, 500)


def test_leave_one_out_neighbours_are_the_brute_force_cosine_neighbours_without_the_query():
    embeddings, labels = torch.randn(40, 6), torch.randint(0, 4, (40,))
    queries, neighbours = retrieval_examples(embeddings, labels, num_queries=5, k=3)
    assert queries.tolist() == [0, 10, 20, 29, 39]  # spread evenly over the items
    similarity = F.normalize(embeddings, dim=1) @ F.normalize(embeddings, dim=1).T
    similarity.fill_diagonal_(-2)
    assert torch.equal(neighbours, similarity[queries].topk(3, dim=1).indices)


def test_query_gallery_neighbours_skip_the_same_label_and_camera_like_the_metric():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.2], [0.0, 1.0]])
    labels = torch.tensor([7, 7, 7, 8])
    cameras = torch.tensor([0, 0, 1, 0])
    is_query = torch.tensor([True, False, False, False])
    queries, neighbours = retrieval_examples(embeddings, labels, 1, 5, is_query=is_query, cameras=cameras)
    # Item 1 is closest but seen by the query's camera; k is cut to the 3 gallery items, one slot stays empty.
    assert queries.tolist() == [0]
    assert neighbours.tolist() == [[2, 3, -1]]


def test_neighbours_are_framed_green_when_they_share_the_query_label_and_red_otherwise():
    rgb_normalised = torch.randn(3, 10, 12)  # negative values, as after mean/std normalisation
    grey = torch.rand(1, 10, 12)
    figure = draw_retrieval_grid([rgb_normalised], torch.tensor([4]), [[grey, rgb_normalised, None]], [[4, 5, None]])
    query, correct, wrong, blank = figure.axes
    assert correct.spines["top"].get_edgecolor() == to_rgba("tab:green")
    assert wrong.spines["top"].get_edgecolor() == to_rgba("tab:red")
    assert not blank.axison
    shown = query.images[0].get_array()
    assert shown.shape == (10, 12, 3) and shown.min() == 0 and shown.max() == 1  # min-max scaled for display


def test_images_that_are_not_channel_first_grey_or_rgb_are_rejected_with_their_shape():
    with pytest.raises(ValueError, match=r"\(1, H, W\) or \(3, H, W\), got shape \(10, 12, 3\)"):
        draw_retrieval_grid([torch.rand(10, 12, 3)], torch.tensor([0]), [[]], [[]])


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_the_projection_gives_two_coordinates_per_item(method):
    assert project_2d(torch.randn(30, 8), method).shape == (30, 2)


def test_pca_keeps_the_two_directions_of_largest_spread_first():
    # Points on a circle in the plane of axes 0 and 1: after L2 normalisation PCA recovers them up to rotation.
    angles = torch.arange(50) * (2 * torch.pi / 50)
    embeddings = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(50), torch.zeros(50)], dim=1)
    points = project_2d(embeddings)
    assert torch.allclose(points.norm(dim=1), torch.ones(50), atol=1e-3)


@pytest.mark.parametrize("scale", [2.0**-100, 2.0**100])
def test_the_projection_of_embeddings_at_any_magnitude_is_the_one_at_scale_one(scale):
    embeddings = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(project_2d(embeddings * scale), project_2d(embeddings))


def test_the_projection_has_a_legend_entry_per_label():
    figure = draw_projection(torch.randn(20, 2), torch.arange(20) % 3)
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"k": 0}, "`k` must be a positive integer"), ({"every_n_epochs": 1.5}, "`every_n_epochs`"),
     ({"projection": "umap"}, "`projection` must be 'pca' or 'tsne'")],
)
def test_bad_settings_are_rejected_with_their_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetrievalPictures(**kwargs)
