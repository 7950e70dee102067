"""Specification of the hyperparameter records: objects built in Python become the plain data that LightningCLI
records, ``{"class_path", "init_args"}``, which ``weights_only`` loading reads; what has no such form is refused."""

import copy
import functools
import inspect
import io

import pytest
import torch

from lit_metric import BackboneEmbedder, BinomialDevianceLoss, ConvEmbedder, PartEmbedder, RetrievalMetrics
from lit_metric.hparams import RecordsArguments, Unrecorded, as_config


def weights_only_round_trip(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "built, expected",
    [
        (
            ConvEmbedder(embedding_dim=4, channels=(2, 3)),
            {"in_channels": 1, "embedding_dim": 4, "channels": [2, 3], "dropout": 0.0},
        ),
        (BinomialDevianceLoss(beta=0.3), {"alpha": 2.0, "beta": 0.3}),
        (
            RetrievalMetrics(k=[2], compute_on_cpu=True),
            {"metrics": ["recall", "precision", "map_at_r", "r_precision"], "k": [2], "chunk_size": 8192,
             "sharded": None, "compute_on_cpu": True},
        ),
    ],
)
def test_lit_metric_s_objects_record_their_class_and_every_argument(built, expected):
    config = as_config(built)
    assert config == {"class_path": f"{type(built).__module__}.{type(built).__name__}", "init_args": expected}
    assert weights_only_round_trip(config) == config


@pytest.mark.parametrize(
    "network",
    [
        lambda: PartEmbedder(image_size=(16, 8), parts=2, part_height=8, channels=(2,), embedding_dim=6),
        lambda: BackboneEmbedder("test_resnet", embedding_dim=6, image_size=(16, 16)),
    ],
)
def test_every_network_of_lit_metric_records_its_arguments(network):
    network = network()
    init_args = as_config(network)["init_args"]
    assert list(init_args) == list(inspect.signature(type(network)).parameters)
    assert init_args["embedding_dim"] == 6


def test_copies_and_pickles_keep_the_record():
    metrics = RetrievalMetrics(k=[3])
    assert as_config(metrics.clone()) == as_config(copy.deepcopy(metrics)) == as_config(metrics)
    buffer = io.BytesIO()
    torch.save(BinomialDevianceLoss(alpha=5.0), buffer)
    buffer.seek(0)
    assert as_config(torch.load(buffer, weights_only=False))["init_args"]["alpha"] == 5.0


def test_classes_and_keyword_factories_are_recorded_as_the_cli_records_them():
    assert as_config(torch.optim.Adam) == {"class_path": "torch.optim.adam.Adam"}
    assert as_config(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)) == {
        "class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}
    }
    assert as_config({"sizes": (1, 2), "name": None}) == {"sizes": [1, 2], "name": None}


def test_a_user_class_records_its_arguments_by_inheriting_the_mixin():
    class Net(RecordsArguments, torch.nn.Module):
        def __init__(self, width: int, *, depth: int = 2):
            super().__init__()

    assert Net(3)._init_arguments == {"width": 3, "depth": 2}
    with pytest.raises(ValueError, match="defined in a function"):
        as_config(Net(3))


class WeightedLoss(BinomialDevianceLoss):
    """A recorded class whose argument, a tensor, has no config."""

    def __init__(self, weights=torch.ones(2)):
        super().__init__()


@pytest.mark.parametrize(
    "value, name",
    [
        (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
        (lambda params: None, "builtins.function"),
        (functools.partial(torch.optim.SGD, None, lr=0.1), "functools.partial"),
        (torch.ones(2), "torch.Tensor"),
        ([1, torch.nn.ReLU()], "torch.nn.modules.activation.ReLU"),
        (WeightedLoss(), "torch.Tensor"),
    ],
)
def test_what_has_no_config_is_refused_with_its_type(value, name):
    with pytest.raises(ValueError, match=f"a {name} cannot be recorded"):
        as_config(value)


def test_the_record_of_an_unrecorded_argument_refuses_to_be_built_naming_it():
    config = Unrecorded.config("embedding_net", torch.nn.Linear(2, 2))
    assert weights_only_round_trip(config) == config
    with pytest.raises(ValueError, match=r"`embedding_net`: .*torch.nn.modules.linear.Linear.*embedding_net=\.\.\."):
        Unrecorded(**config["init_args"])
