"""The ``{"instances": [...]}`` -> ``{"predictions": [...]}`` form that Vertex AI requires and
SageMaker clients commonly send: one instance per row of the batch.

An instance is the value of one sample of the model's single input (nested lists or a scalar),
or an object ``{input name: value}`` (required when the model has several inputs). The instances
are stacked along a new first axis, so the model's first dim is the batch. A prediction is one
row of the single output, or ``{output name: row}`` when the model has several.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import bad_request
from .models import ServedModel
from .tensors import array_from_values, check_shape

MAX_INSTANCES = 1 << 16


def feeds_from_instances(model: ServedModel, instances) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise bad_request("'instances' must be a non-empty list")
    if len(instances) > MAX_INSTANCES:
        raise bad_request(f"at most {MAX_INSTANCES} instances per request")
    names = list(model.inputs)
    columns: dict[str, list] = {name: [] for name in names}
    for number, instance in enumerate(instances):
        if isinstance(instance, dict):
            unknown = [key[:64] for key in instance if key not in columns]
            missing = [name for name in names if name not in instance]
            if unknown or missing:
                raise bad_request(f"instances[{number}] must have exactly the inputs {names}; "
                                  f"missing {missing}, unexpected {unknown}")
            for name in names:
                columns[name].append(instance[name])
        elif len(names) == 1:
            columns[names[0]].append(instance)
        else:
            raise bad_request(f"instances[{number}] must be an object {{input name: value}}: model "
                              f"'{model.name}' takes several inputs {names}")
    feeds = {}
    bindings: dict[str, int] = {}
    for name in names:
        array = array_from_values(name, columns[name], model.inputs[name].dtype)
        check_shape(name, list(array.shape), model.inputs[name], bindings)
        feeds[name] = array
    return feeds


def predictions(results: Mapping[str, np.ndarray], count: int) -> list:
    """One prediction per instance: the row of the single output, or {name: row}."""
    for name, array in results.items():
        if array.ndim == 0 or array.shape[0] != count:
            raise RuntimeError(f"output '{name}' has no batch dim of {count} rows to split into "
                               "predictions")
    if len(results) == 1:
        return next(iter(results.values())).tolist()
    rows = {name: array.tolist() for name, array in results.items()}
    return [{name: rows[name][i] for name in rows} for i in range(count)]
