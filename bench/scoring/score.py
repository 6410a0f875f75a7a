"""Pure scoring: an attack's prediction plus the ground truth in, metrics out.

Each prediction type (``bench.api.predictions``) has one scorer in ``bench/scoring/``, registered with
``scorer_for``; ``score`` looks it up by the prediction's type.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.api.metrics import Metric  # defined in the api (methods make them too); scorers import it here
from bench.api.predictions import Prediction
from bench.api.transcript import GroundTruth

Scorer = Callable[[Prediction, GroundTruth], list[Metric]]
_SCORERS: dict[type, Scorer] = {}


def scorer_for(prediction_type: type) -> Callable[[Scorer], Scorer]:
    def decorate(function: Scorer) -> Scorer:
        if prediction_type in _SCORERS:
            raise ValueError(f"a scorer for {prediction_type.__name__} is already registered")
        _SCORERS[prediction_type] = function
        return function

    return decorate


def score(prediction: Prediction, truth: GroundTruth) -> list[Metric]:
    _load_scorers()
    try:
        scorer = _SCORERS[type(prediction)]
    except KeyError:
        raise TypeError(f"no scorer for predictions of type {type(prediction).__name__}") from None
    return scorer(prediction, truth)


def _load_scorers() -> None:
    import importlib
    import pkgutil

    import bench.scoring

    for info in pkgutil.iter_modules(bench.scoring.__path__, prefix="bench.scoring."):
        importlib.import_module(info.name)
