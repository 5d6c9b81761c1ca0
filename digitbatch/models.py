"""The model catalogue: named scikit-learn pipelines, and their compact form.

A fitted pipeline is turned into a :class:`LinearModel` (plain arrays,
fixed scaling folded into the weights) for saving and for the scoring
kernel; :meth:`LinearModel.to_sklearn` rebuilds an equivalent estimator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from . import kernels
from .errors import TrainingError

PIXEL_SCALE = 1.0 / 255.0


def _scale(X):
    return np.asarray(X, dtype=np.float64) * PIXEL_SCALE


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    binary_digit: int | None = None


CATALOGUE = {
    "sgd": ModelSpec(
        "sgd",
        "multiclass SGDClassifier(loss='log_loss') on pixels scaled to [0, 1], as in the "
        "walk-through (which fits raw 0-255 pixels: 88.7% after 110 s)",
    ),
}
DETECT_RE = re.compile(r"^detect-([0-9])$")


def get_spec(name: str) -> ModelSpec:
    """The catalogue entry called ``name`` (``detect-DIGIT`` for any digit)."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    raise TrainingError(
        f"unknown model {name!r}; the catalogue has: {', '.join(sorted(CATALOGUE))} "
        f"(see `digitbatch models`)"
    )


def build(name: str, *, seed: int) -> Pipeline:
    """An unfitted scikit-learn pipeline for catalogue model ``name``."""
    get_spec(name)
    return Pipeline([
        ("scale", FunctionTransformer(_scale)),
        ("clf", SGDClassifier(loss="log_loss", alpha=1e-3, max_iter=1000, tol=1e-3,
                              random_state=seed)),
    ])


def search_grid(name: str) -> dict:
    """The small hyperparameter grid ``--search`` explores for ``name``."""
    get_spec(name)
    return {"clf__alpha": [1e-4, 3e-4, 1e-3]}


@dataclass
class LinearModel:
    """``argmax(X @ coef.T + intercept)`` on raw uint8 pixels (scaling folded in)."""

    name: str
    coef: np.ndarray  # (k, 784), or (1, 784) for a binary model
    intercept: np.ndarray  # (k,)
    classes: np.ndarray  # (n_classes,)
    loss: str
    params: dict = field(default_factory=dict)

    kind = "linear"

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept, "classes": self.classes}

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        d = kernels.linear_decision(kernels.flatten(images), self.coef, self.intercept,
                                    dtype=np.float64)
        return d[:, 0] if d.shape[1] == 1 else d

    def predict(self, images: np.ndarray) -> np.ndarray:
        return kernels.linear_predict(images, self.coef, self.intercept, self.classes)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Probabilities as scikit-learn's SGDClassifier gives them for log_loss."""
        if self.loss != "log_loss":
            raise TrainingError(f"model {self.name!r} (loss {self.loss!r}) gives no probabilities")
        d = self.decision_function(images)
        p = 1.0 / (1.0 + np.exp(-d))
        if p.ndim == 1:
            return np.column_stack([1 - p, p])
        s = p.sum(axis=1, keepdims=True)
        return np.divide(p, s, out=np.full_like(p, 1.0 / p.shape[1]), where=s > 0)

    def to_sklearn(self) -> SGDClassifier:
        """An equivalent fitted SGDClassifier on raw (unscaled, flattened) pixels."""
        clf = SGDClassifier(loss=self.loss)
        clf.coef_ = self.coef.astype(np.float64)
        clf.intercept_ = self.intercept.astype(np.float64)
        clf.classes_ = self.classes
        clf.n_features_in_ = self.coef.shape[1]
        clf.t_ = 1.0
        return clf


def compact(name: str, pipeline: Pipeline) -> LinearModel:
    """Fold the fixed scaling step into the classifier's weights."""
    clf = pipeline.named_steps["clf"]
    return LinearModel(
        name=name,
        coef=np.asarray(clf.coef_, dtype=np.float64) * PIXEL_SCALE,
        intercept=np.asarray(clf.intercept_, dtype=np.float64),
        classes=np.asarray(clf.classes_),
        loss=clf.loss,
        params={k: v for k, v in clf.get_params().items() if isinstance(v, (int, float, str, bool))
                or v is None},
    )
