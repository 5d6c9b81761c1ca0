"""The model catalogue: named scikit-learn pipelines, and their compact form.

Every catalogue pipeline takes flattened uint8 images, (n, 784), so the
arrays shipped to the cluster stay 784 bytes an image. After fitting, a
pipeline is folded into a :class:`CompactModel`: the feature step (a pure
numpy function of a chunk, with its own arrays for ``sgd-patches``: the
learned patch filters) plus a :class:`~digitbatch.features.LinearPredictor`
or :class:`~digitbatch.features.KernelPredictor` whose fixed linear steps
(pixel scaling, PCA, Nystroem's normalisation) are folded into the weights.
That is what is saved, and what the scoring kernel runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from . import calibration as CAL
from . import features as F
from . import folding as FO
from . import kernels
from . import patchfeatures as PF
from . import scorefeatures as SF
from .errors import TrainingError
from .digits import UNKNOWN_LABEL

PIXEL_SCALE = 1.0 / 255.0
FEATURES = ("pixels", "deskew", "kernel")
PATCH_FEATURES = "patches"
# Chosen on a validation split of the MNIST training rows (benchmarks/explore_features.py).
# float32 kernel scoring is exact up to ~1e-3 in decision values (measured);
# rows with a top-2 gap below this are rescored in float64.
KERNEL_TIE_TOLERANCE = 0.02
KERNEL_PARAMS = {"hog_weight": 7.0, "pca_components": 80, "n_components": 2000, "gamma": 0.02}
# sgd-patches, chosen on a validation split of the MNIST training rows
# (benchmarks/explore_patches.py; docs/patch-model.md has the measurements).
PATCH_PARAMS = {"n_filters": 64, "patch": 5, "stride": 2, "grid": 4, "threshold": 1.0,
                "whiten_eps": 0.1, "norm": 3.0}
PATCH_HEAD = {"pca_components": 100, "n_components": 1500, "gamma": 0.2, "alpha": 1e-6,
              "max_iter": 60}


def pixels_scaled_sparse(X: np.ndarray):
    """Pixels / 255 (the scaling SGD needs to converge fast) as a float64 CSR
    matrix: the values of ``X.astype(float64) * PIXEL_SCALE``, stored for the
    nonzero pixels only (about 19% of MNIST's).

    SGD's sparse path visits each row's nonzeros only, several times faster
    than the dense fit (README, "Measured defaults"); scikit-learn's sparse
    SGD also damps the intercept's step, SPARSE_INTERCEPT_DECAY, so the two
    fits differ slightly.
    """
    from scipy.sparse import csr_matrix

    X = np.ascontiguousarray(X)
    n, d = X.shape[0], int(np.prod(X.shape[1:]))
    flat = X.reshape(-1)
    at = np.flatnonzero(flat)  # row-major: each row's columns ascending
    # scikit-learn's SGD wants int32 indices (it copies int64 ones)
    itype = np.int32 if flat.size < np.iinfo(np.int32).max else np.int64
    at = at.astype(itype)
    indptr = np.searchsorted(at, np.arange(n + 1, dtype=np.int64) * d).astype(itype)
    cols = at % itype(d)
    data = flat[at].astype(np.float64) * PIXEL_SCALE
    return csr_matrix((data, cols, indptr), shape=(n, d))


def pixels_raw(X: np.ndarray) -> np.ndarray:
    """Raw 0-255 pixels as float64 (the walk-through's detector input)."""
    return np.asarray(X, dtype=np.float64)


def deskew_scaled(X: np.ndarray) -> np.ndarray:
    """Deskewed pixels / 255 as float64, flattened."""
    return deskew_raw(X) * PIXEL_SCALE


def deskew_raw(X: np.ndarray) -> np.ndarray:
    """Deskewed pixels on the 0-255 scale as float64, flattened."""
    d = F.deskew(np.asarray(X).reshape(-1, 28, 28))
    return d.reshape(d.shape[0], -1).astype(np.float64)


def pixel_scale(spec: "ModelSpec") -> float:
    """The fixed factor a model's pixel/deskew features apply.

    The detector keeps the walk-through's raw 0-255 pixels: on pixels / 255
    its LogisticRegression(tol=0.1) stops at the first iteration (89.7%,
    always "no"); SGD needs the scaling to converge fast.
    """
    return 1.0 if spec.binary_digit is not None else PIXEL_SCALE


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    default_features: str = "pixels"
    feature_choices: tuple[str, ...] = FEATURES
    binary_digit: int | None = None


CATALOGUE = {
    "sgd": ModelSpec(
        "sgd",
        "multiclass SGDClassifier(loss='log_loss') on scaled pixels (the walk-through fits "
        "raw 0-255 pixels: 88.7% after 110 s); --features pixels|deskew|kernel",
    ),
    "sgd-kernel": ModelSpec(
        "sgd-kernel",
        "the quick-to-fit kernel model (about 34,000 images/s): deskew + HOG -> PCA(80) -> "
        "Nystroem RBF (2000) -> hinge SGDClassifier",
        default_features="kernel", feature_choices=("kernel",),
    ),
    "sgd-patches": ModelSpec(
        "sgd-patches",
        "the flagship, the most accurate (99.44%; about 30,000 images/s): deskew -> "
        "k-means 5x5 patch filters (64, soft threshold, "
        "4x4 pooling; Coates, Lee and Ng 2011) -> PCA(100) -> Nystroem RBF (1500) -> hinge "
        "SGDClassifier",
        default_features=PATCH_FEATURES, feature_choices=(PATCH_FEATURES,),
    ),
    "detect-DIGIT": ModelSpec(
        "detect-DIGIT",
        "binary detector 'is it a DIGIT?' (e.g. detect-2): LogisticRegression(tol=0.1, "
        "solver='lbfgs', max_iter=70000) on y == DIGIT; --features pixels|deskew|kernel",
    ),
}
DETECT_RE = re.compile(r"^detect-([0-9])$")


def get_spec(name: str) -> ModelSpec:
    """The catalogue entry called ``name`` (``detect-DIGIT`` for any digit 0-9)."""
    if isinstance(name, str):
        if name in CATALOGUE and name != "detect-DIGIT":
            return CATALOGUE[name]
        m = DETECT_RE.match(name)
        if m:
            generic = CATALOGUE["detect-DIGIT"]
            return ModelSpec(name, generic.summary.replace("DIGIT", m.group(1)),
                             binary_digit=int(m.group(1)))
    import difflib

    names = [n for n in CATALOGUE if n != "detect-DIGIT"] + [f"detect-{d}" for d in range(10)]
    hint = difflib.get_close_matches(str(name).lower(), names, n=1, cutoff=0.6)
    raise TrainingError(
        f"unknown model {name!r}"
        + (f": did you mean {hint[0]!r}?" if hint else "")
        + "; the catalogue has: sgd, sgd-kernel, sgd-patches, detect-0 ... detect-9 "
          "(see `digitbatch models`)"
    )


def resolve_features(spec: ModelSpec, features: str | None) -> str:
    feats = features or spec.default_features
    if feats not in spec.feature_choices:
        raise TrainingError(
            f"--features {feats!r} is not available for {spec.name}: choose one of "
            f"{', '.join(spec.feature_choices)}"
        )
    return feats


def _feature_steps(feats: str, seed: int, scale: float) -> list[tuple[str, object]]:
    # scikit-learn is imported where pipelines are built, not at module import:
    # a scoring worker unpickling a CompactModel then needs numpy only.
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.preprocessing import FunctionTransformer

    raw = scale == 1.0
    if feats == "pixels":
        return [("features", FunctionTransformer(pixels_raw if raw else pixels_scaled_sparse,
                                                 accept_sparse=True))]
    if feats == "deskew":
        return [("features", FunctionTransformer(deskew_raw if raw else deskew_scaled))]
    p = KERNEL_PARAMS
    return [
        ("features", FunctionTransformer(F.kernel_features,
                                         kw_args={"hog_weight": p["hog_weight"],
                                                  "dtype": np.float64})),
        ("pca", PCA(p["pca_components"], svd_solver="covariance_eigh", random_state=seed)),
        ("nystroem", Nystroem(gamma=p["gamma"], n_components=p["n_components"],
                              random_state=seed)),
    ]


def build(name: str, *, seed: int, features: str | None = None):
    """An unfitted pipeline for catalogue model ``name`` on (n, 784) uint8 input."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.pipeline import Pipeline

    spec = get_spec(name)
    feats = resolve_features(spec, features)
    if name == "sgd-kernel":
        return F.make_kernel_pipeline(random_state=seed, **KERNEL_PARAMS)
    if name == "sgd-patches":
        from .patchlearn import make_patch_pipeline

        return make_patch_pipeline(random_state=seed, **PATCH_PARAMS, **PATCH_HEAD)
    if spec.binary_digit is not None and feats == "kernel":
        # The walk-through's LogisticRegression(tol=0.1) stops at its first
        # iteration on kernel features (answering "no" always: 89.7%); the
        # flagship's hinge SGD head gives 99.66% on detect-2.
        clf = SGDClassifier(loss="hinge", alpha=1e-6, max_iter=60, tol=None, random_state=seed)
    elif spec.binary_digit is not None:
        clf = LogisticRegression(tol=0.1, solver="lbfgs", max_iter=70000)
    else:
        # Averaged SGD, a fixed 6 epochs, tuned on a validation split (its
        # accuracy and fit time beside the walk-through's: README, Models).
        clf = SGDClassifier(loss="log_loss", alpha=1e-5, average=True, max_iter=6, tol=None,
                            random_state=seed)
    return Pipeline([*_feature_steps(feats, seed, pixel_scale(spec)), ("clf", clf)])


def search_grid(name: str, features: str | None = None) -> dict:
    """The small hyperparameter grid ``--search`` explores for ``name``."""
    spec = get_spec(name)
    feats = resolve_features(spec, features)
    if spec.binary_digit is not None and feats != "kernel":
        return {"clf__C": [0.1, 1.0, 10.0]}
    if spec.binary_digit is not None:
        return {"clf__alpha": [1e-7, 1e-6, 1e-5]}
    if name in ("sgd-kernel", "sgd-patches"):
        return {"sgd__alpha": [1e-7, 1e-6, 1e-5]}
    return {"clf__alpha": [1e-6, 1e-5, 1e-4]}


def target(spec: ModelSpec, labels: np.ndarray) -> np.ndarray:
    """What the model predicts: the digit, or 1/0 for 'is it DIGIT' (unknown stays unknown)."""
    return binary_target(labels, spec.binary_digit)


def binary_target(labels: np.ndarray, digit: int | None) -> np.ndarray:
    """``labels``, or 1/0 for 'is it ``digit``' when a digit is given (unknown stays unknown)."""
    if digit is None:
        return labels
    out = (labels == digit).astype(np.int8)
    out[labels == UNKNOWN_LABEL] = UNKNOWN_LABEL
    return out


@dataclass
class CompactModel:
    """A fitted catalogue model as numpy arrays: feature step + folded head."""

    name: str
    features: str
    head: FO.LinearPredictor | FO.KernelPredictor
    loss: str
    binary_digit: int | None = None
    params: dict = field(default_factory=dict)
    # the feature step's own arrays (sgd-patches: "filters" and "bias")
    feature_arrays: dict = field(default_factory=dict)
    # the calibration fitted at train time (digitbatch.calibration), None for
    # a model trained before calibration existed: scored as before
    calibration: dict | None = None

    @property
    def classes(self) -> np.ndarray:
        return self.head.classes

    @property
    def n_classes(self) -> int:
        return len(self.head.classes)

    @property
    def kind(self) -> str:
        return "kernel" if isinstance(self.head, FO.KernelPredictor) else "linear"

    def target(self, labels: np.ndarray) -> np.ndarray:
        return target(get_spec(self.name), labels)

    def featurize(self, images: np.ndarray, dtype=np.float64) -> np.ndarray:
        """The head's input for a chunk; pixel scaling is folded into the head."""
        images = np.asarray(images).reshape(-1, 28, 28)
        if self.features == "pixels":
            return kernels.flatten(images)
        if self.features == "deskew":
            return kernels.flatten(F.deskew(images))
        if self.features == PATCH_FEATURES:
            return PF.patch_features(images, self.feature_arrays["filters"],
                                     self.feature_arrays["bias"], dtype=dtype,
                                     **patch_settings(self.params))
        return F.kernel_features(images, hog_weight=self.params.get("hog_weight", 0.0),
                                 dtype=dtype)

    def scorer32(self) -> tuple[FO.KernelScorer, bool]:
        """A kernel head's float32 :class:`~digitbatch.folding.KernelScorer` (made
        once, kept on the instance), and whether it takes the kernel features as
        the column blocks of :func:`~digitbatch.scorefeatures.kernel_feature_parts`
        (else the float32 :meth:`featurize`)."""
        blocks = self.features == "kernel" and self.head.projection is not None
        if "_scorer32" not in self.__dict__:
            hw = float(self.params.get("hog_weight", 0.0))
            self.__dict__["_scorer32"] = FO.kernel_scorer(
                self.head, *(SF.block_layout(hw) if blocks else ()))
        return self.__dict__["_scorer32"], blocks

    def _kernel_scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kernel-head decision values (float32) and class indices equal to float64's.

        The float32 :class:`~digitbatch.folding.KernelScorer` of the head
        scores faster (README, "Measured defaults"); rows whose top two
        values are closer than its rounding (~1e-3) are rescored in float64.
        """
        scorer, blocks = self.scorer32()
        if blocks:
            parts, scales = SF.kernel_feature_parts(
                images, hog_weight=float(self.params.get("hog_weight", 0.0)))
            d = scorer.decision_function(*parts, row_scales=scales)
        else:
            d = scorer.decision_function(self.featurize(images, np.float32))
        if d.shape[0] == 0:
            return d, np.zeros(0, np.intp)
        if d.shape[1] == 1:
            idx = (d[:, 0] > 0).astype(np.intp)
            gap = np.abs(d[:, 0])
        else:
            idx = np.argmax(d, axis=1)
            gap = kernels.top2_margin(d)
        close = np.flatnonzero(gap < KERNEL_TIE_TOLERANCE)
        if close.size:
            d64 = self.head.decision_function(self.featurize(images[close]))
            idx[close] = (d64 > 0).astype(np.intp) if d64.ndim == 1 else np.argmax(d64, axis=1)
        return d, idx

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        return self.head.decision_function(self.featurize(images))

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            h = self.head
            return kernels.linear_predict_features(self.featurize(images), h.weights,
                                                   h.intercept, h.classes)
        return self.classes[self._kernel_scores(np.asarray(images).reshape(-1, 28, 28))[1]]

    @property
    def has_proba(self) -> bool:
        """Whether the model gives probabilities: every calibrated model does;
        an uncalibrated one only with a log-loss head (scikit-learn's)."""
        return self.calibration is not None or self.loss in ("log_loss", "logistic")

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Probabilities: calibrated ones, or scikit-learn's for an uncalibrated log-loss model."""
        if not self.has_proba:
            raise TrainingError(f"model {self.name!r} (loss {self.loss!r}) gives no probabilities")
        if self.calibration is not None:
            d = self.decision_function(images)
            idx = (d > 0).astype(np.intp) if d.ndim == 1 else np.argmax(d, axis=1)
            return CAL.scores(d, idx, self.calibration["temperature"], proba=True).proba
        return kernels.ovr_proba(self.decision_function(images))

    def score_chunk(self, images: np.ndarray, *, proba: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(pred, margin, proba)`` of a chunk in one pass (proba None without
        probabilities, or when ``proba`` is false); see :meth:`score_chunk_full`."""
        s = self.score_chunk_full(images, proba=proba)
        return s.pred, s.margin, s.proba

    def score_chunk_full(self, images: np.ndarray, *, proba: bool = True) -> "ChunkScores":
        """Every per-row figure of a chunk in one pass (:class:`ChunkScores`).

        Calibrated models: the margin is top-1 minus top-2 calibrated
        probability, the gap the calibrated decision-value gap
        (:func:`digitbatch.calibration.scores`). Uncalibrated ones as before:
        the margin of scikit-learn's probabilities (log-loss) or of the
        decision values, the gap that of the decision values.
        """
        top = None
        if self.kind == "linear":
            X = self.featurize(images)
            d, idx, top = kernels.linear_scores(X, self.head.weights, self.head.intercept,
                                                with_top2=True)
        else:
            d, idx = self._kernel_scores(np.asarray(images).reshape(-1, 28, 28))
        pred = self.classes[idx]
        if self.calibration is not None:
            c = CAL.scores(d, idx, self.calibration["temperature"], proba=proba)
            return ChunkScores(pred, c.margin, c.proba.astype(np.float32) if proba else None,
                               c.gap, self.classes[c.second], c.confidence)
        # uncalibrated: the runner-up and gap of the decision values
        raw = CAL.scores(d, idx, 1.0)
        gap, second = raw.gap, self.classes[raw.second]
        if self.has_proba and not proba:
            return ChunkScores(pred, kernels.ovr_margin(d, top), None, gap, second, None)
        # float64 probabilities: float32 sigmoids saturate at |d| > ~17, which
        # made most margins exactly 0 or 1 and the doubtful ranking useless.
        p64 = kernels.ovr_proba(d.astype(np.float64)) if self.has_proba else None
        margin = kernels.top2_margin(p64 if p64 is not None else d).astype(np.float32)
        probs = p64.astype(np.float32) if p64 is not None else None
        # (no confidence: an uncalibrated model's probabilities are not reported as such)
        return ChunkScores(pred, margin, probs if proba else None, gap, second, None)


@dataclass(frozen=True)
class ChunkScores:
    """What :meth:`CompactModel.score_chunk_full` gives for each row of a chunk."""

    pred: np.ndarray  # class labels
    margin: np.ndarray  # float32: top-1 minus top-2 probability (decision value without)
    proba: np.ndarray | None  # float32 (n, k), when asked for and the model has them
    gap: np.ndarray  # float32: the (calibrated) decision-value gap, top-1 minus top-2
    second: np.ndarray  # the runner-up class labels
    confidence: np.ndarray | None  # float64 top probability (None without probabilities)


def compact(name: str, pipeline, *, features: str | None = None) -> CompactModel:
    """Fold a fitted catalogue pipeline into a :class:`CompactModel`."""
    spec = get_spec(name)
    feats = resolve_features(spec, features)
    clf = pipeline.steps[-1][1]
    loss = getattr(clf, "loss", "logistic")
    params = {k: v for k, v in clf.get_params().items()
              if isinstance(v, (int, float, str, bool)) or v is None}
    arrays = {}
    if feats == PATCH_FEATURES:
        from sklearn.pipeline import Pipeline

        step = pipeline.named_steps["features"]
        head = FO.fold_kernel(Pipeline(pipeline.steps[1:]))
        params.update({f"patch_{k}": v for k, v in step.settings().items()})
        arrays = {"filters": step.filters_, "bias": step.bias_}
    elif feats == "kernel":
        head = FO.fold_kernel(pipeline)
        params["hog_weight"] = float(pipeline.named_steps["features"].kw_args["hog_weight"])
    else:
        from sklearn.pipeline import Pipeline

        head = FO.fold_linear(Pipeline(pipeline.steps[1:]), scale=pixel_scale(spec))
    return CompactModel(name=name, features=feats, head=head, loss=loss,
                        binary_digit=spec.binary_digit, params=params, feature_arrays=arrays)


PATCH_SETTINGS = ("patch", "stride", "grid", "threshold", "scale")


def patch_settings(params: dict) -> dict:
    """The :func:`~digitbatch.patchfeatures.patch_features` settings in a model's params."""
    return {k: params[f"patch_{k}"] for k in PATCH_SETTINGS}


def check_feature_arrays(model: CompactModel) -> None:
    """ValueError unless the feature arrays fit the features and the head's input."""
    if model.features != PATCH_FEATURES:
        if model.feature_arrays:
            raise ValueError(f"{model.features} features take no arrays; got "
                             f"{sorted(model.feature_arrays)}")
        return
    missing = [k for k in ("filters", "bias") if k not in model.feature_arrays]
    missing += [f"patch_{k}" for k in PATCH_SETTINGS if f"patch_{k}" not in model.params]
    if missing:
        raise ValueError(f"patch features need {missing}")
    s = patch_settings(model.params)
    k = PF.check_arrays(model.feature_arrays["filters"], model.feature_arrays["bias"],
                        patch=s["patch"], stride=s["stride"], grid=s["grid"])
    head = model.head
    if not isinstance(head, FO.KernelPredictor):
        raise ValueError("patch features feed a kernel head; this model has a linear one")
    n_in = head.landmarks.shape[1] if head.projection is None else head.projection.shape[0]
    if n_in != PF.n_features(k, s["grid"]):
        raise ValueError(f"{k} filters on a {s['grid']}x{s['grid']} grid make "
                         f"{PF.n_features(k, s['grid'])} features; the head takes {n_in}")
