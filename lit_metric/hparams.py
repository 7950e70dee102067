"""Hyperparameters that a checkpoint can hold safely: objects built in Python recorded as configs.

LightningCLI records each object it builds as ``{"class_path": ..., "init_args": {...}}``, plain data that
``torch.load(weights_only=True)`` reads and that Lightning's loader rebuilds the objects from. An object built in
Python has no such record: pickled into the hyperparameters it makes the checkpoint unreadable with
``weights_only=True``. :class:`RecordsArguments` gives a class the same record, taken from the arguments it was
built with, and :func:`as_config` turns a value into plain data: numbers, strings, lists, dicts and such records.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

__all__ = ["RecordsArguments", "Unrecorded", "as_config"]


class RecordsArguments:
    """Mixin that records the arguments an instance was built with, defaults included, for :func:`as_config`.

    The classes of lit_metric's networks, criteria and metrics have it; a class of one's own gets it by listing it
    first among its bases, ``class MyNet(RecordsArguments, nn.Module)``, so that a module built with it in Python
    records it and its checkpoints rebuild it.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            # __init__ raises it for the call itself; copy and pickle make an empty instance and restore the record.
            return self
        bound.apply_defaults()
        arguments = {}
        for parameter in list(signature.parameters.values())[1:]:  # after self
            value = bound.arguments[parameter.name]
            if parameter.kind is parameter.VAR_KEYWORD:
                arguments.update(value)
            elif parameter.kind is parameter.VAR_POSITIONAL:
                if value:
                    return self  # no names to record them under
            else:
                arguments[parameter.name] = value
        # Set plainly: nn.Module and torchmetrics.Metric attributes are not set up before their __init__.
        object.__setattr__(self, "_init_arguments", arguments)
        return self


def as_config(value: Any) -> Any:
    """``value`` as plain data that ``weights_only`` loading reads and LightningCLI's parser rebuilds it from.

    ``None``, booleans, numbers and strings stay as they are; tuples become lists; a class becomes
    ``{"class_path": ...}``, a :func:`functools.partial` of a class with keywords only (an optimizer or scheduler
    factory) ``{"class_path": ..., "init_args": keywords}``, and an instance of a :class:`RecordsArguments` class
    ``{"class_path": ..., "init_args": arguments}``.

    Raises:
        ValueError: naming the type of a value, or part of one, that has no such form.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [as_config(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: as_config(item) for key, item in value.items()}
    if isinstance(value, type):
        return {"class_path": _class_path(value)}
    if isinstance(value, functools.partial) and isinstance(value.func, type) and not value.args:
        return {"class_path": _class_path(value.func), "init_args": as_config(value.keywords)}
    arguments = getattr(value, "_init_arguments", None)
    if isinstance(value, RecordsArguments) and arguments is not None:
        return {"class_path": _class_path(type(value)), "init_args": as_config(arguments)}
    raise ValueError(f"a {_name(type(value))} cannot be recorded as a config")


def _class_path(cls: type) -> str:
    if "<locals>" in cls.__qualname__:
        raise ValueError(f"the class {cls.__qualname__}, defined in a function, cannot be imported by its path")
    return f"{cls.__module__}.{cls.__qualname__}"


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Unrecorded(nn.Module):
    """What a checkpoint records for a module argument that :func:`as_config` cannot record: building it raises.

    Lightning's loader builds the module's arguments from the checkpoint's hyperparameters before the module, so
    loading such a checkpoint stops here, with the argument's name, unless the caller passes that argument.

    Args:
        argument: the module argument, e.g. ``"embedding_net"``.
        type_name: the type of the object it was built with, e.g. ``"mypackage.MyNet"``.

    Raises:
        ValueError: always, naming ``argument`` and how to pass it.
    """

    def __init__(self, argument: str, type_name: str) -> None:
        raise ValueError(
            f"`{argument}`: the checkpoint does not record its {type_name}, which was built in Python and records no "
            f"config; pass one to load it: `load_from_checkpoint(path, {argument}=...)`"
        )

    @staticmethod
    def config(argument: str, value: Any) -> dict[str, Any]:
        """The record of ``value``, the unrecordable object given as ``argument``."""
        return {
            "class_path": _class_path(Unrecorded),
            "init_args": {"argument": argument, "type_name": _name(type(value))},
        }
