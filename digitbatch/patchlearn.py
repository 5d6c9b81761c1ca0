"""Learning the patch filters of ``sgd-patches``, and its fitted feature step.

:func:`learn_filters` is the unsupervised part of Coates, Lee and Ng (2011):
windows of deskewed training digits are ZCA-whitened and clustered by
k-means; the unit-norm centroids, with the whitening and the patch mean
folded in, are plain (patch * patch, K) filters and a bias that
:func:`digitbatch.patchfeatures.patch_features` applies to raw windows.
:class:`PatchFeatures` is the scikit-learn transformer a pipeline fits
(each CV fold learns its own filters from its own training rows);
:mod:`digitbatch.models` folds it into arrays after fitting.
:class:`AugmentedPipeline` adds distorted copies of the training rows to
the classifier's fit, a chunk at a time.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from . import patchfeatures as PF
from .features import deskew

log = logging.getLogger(__name__)

# Windows whose pixel standard deviation (on the 0-1 scale) is below this are
# blank paper or solid ink: they are left out of the clustering.
MIN_PATCH_STD = 0.05
# Images whose features set the typical norm: enough for a stable mean.
SCALE_SAMPLE = 2000


def learn_filters(images: np.ndarray, *, n_filters: int, patch: int = 5, whiten_eps: float = 0.1,
                  n_images: int = 4000, n_patches: int = 200000, random_state: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """K-means filters on whitened windows of deskewed digits.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28) or (n, 784), uint8
        Training digits (a sample of ``n_images`` of them is used).
    n_filters : int
        K, the number of centroids.
    patch : int
        Window side.
    whiten_eps : float
        Added to the eigenvalues of the window covariance before whitening
        (on pixels / 255); larger smooths the filters.
    n_images, n_patches : int
        How many digits and windows the clustering sees at most.
    random_state : int
        Seeds the samples and k-means.

    Returns
    -------
    filters : ndarray, shape (patch * patch, K), float32
        ``window / 255 @ filters + bias`` is each whitened window's dot
        product with each unit-norm centroid.
    bias : ndarray, shape (K,), float32
    """
    from sklearn.cluster import MiniBatchKMeans

    if isinstance(n_filters, bool) or not isinstance(n_filters, (int, np.integer)) or n_filters < 2:
        raise ValueError(f"n_filters must be an integer >= 2; got {n_filters!r}")
    if whiten_eps <= 0:
        raise ValueError(f"whiten_eps must be > 0; got {whiten_eps!r}")
    imgs = np.asarray(images)
    rng = np.random.default_rng(random_state)
    if imgs.shape[0] > n_images:
        imgs = imgs[np.sort(rng.choice(imgs.shape[0], n_images, replace=False))]
    straight = deskew(imgs) * np.float32(1.0 / 255.0)
    win = np.lib.stride_tricks.sliding_window_view(straight, (patch, patch), axis=(1, 2))
    windows = win.reshape(-1, patch * patch)
    windows = windows[windows.std(axis=1) > MIN_PATCH_STD]
    if windows.shape[0] < n_filters:
        raise ValueError(f"the images hold {windows.shape[0]} windows with ink, fewer than "
                         f"n_filters={n_filters}: give more training images")
    if windows.shape[0] > n_patches:
        windows = windows[rng.choice(windows.shape[0], n_patches, replace=False)]
    mean, whiten = whitening(windows.astype(np.float64), whiten_eps)
    km = MiniBatchKMeans(n_filters, n_init=3, batch_size=4096,
                         random_state=int(rng.integers(2**31 - 1)))
    km.fit((windows - mean) @ whiten)
    filters, bias = fold_centroids(km.cluster_centers_, mean, whiten)
    log.info("learned %d %dx%d patch filters from %d windows of %d digits",
             n_filters, patch, patch, windows.shape[0], imgs.shape[0])
    return filters, bias


def whitening(windows: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """ZCA whitening of (n, d) windows: ``(windows - mean) @ whiten`` has
    covariance ``V diag(l / (l + eps)) V^T`` (near the identity where the
    variances ``l`` are large next to ``eps``)."""
    mean = windows.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(windows - mean, rowvar=False))
    whiten = (eigvec / np.sqrt(np.maximum(eigval, 0.0) + eps)) @ eigvec.T
    return mean, whiten


def fold_centroids(centres: np.ndarray, mean: np.ndarray, whiten: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Filters and bias with ``window @ filters + bias`` equal to the whitened
    window's dot product with each centroid scaled to unit norm."""
    unit = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    filters = whiten @ unit.T
    return filters.astype(np.float32), (-mean @ filters).astype(np.float32)


class PatchFeatures(TransformerMixin, BaseEstimator):
    """The fitted feature step: learns filters in ``fit``; ``transform`` is
    :func:`~digitbatch.patchfeatures.patch_features` (float64, for the
    scikit-learn steps after it).

    ``fit`` also sets ``scale_`` so the features' mean norm over a sample of
    the training digits is ``norm``: the RBF kernel after them then keeps
    its width whatever K and the grid are.
    """

    def __init__(self, n_filters: int = 64, patch: int = 5, stride: int = 2, grid: int = 4,
                 threshold: float = 1.0, whiten_eps: float = 0.1, norm: float = 3.0,
                 random_state: int = 0):
        self.n_filters = n_filters
        self.patch = patch
        self.stride = stride
        self.grid = grid
        self.threshold = threshold
        self.whiten_eps = whiten_eps
        self.norm = norm
        self.random_state = random_state

    def fit(self, X, y=None):
        self.filters_, self.bias_ = learn_filters(
            X, n_filters=self.n_filters, patch=self.patch, whiten_eps=self.whiten_eps,
            random_state=self.random_state)
        self.scale_ = 1.0
        sample = np.asarray(X)[:SCALE_SAMPLE]
        typical = float(np.linalg.norm(self._features(sample, np.float64), axis=1).mean())
        self.scale_ = self.norm / typical if typical > 0 else 1.0
        self.n_features_in_ = int(np.prod(np.asarray(X).shape[1:]))
        return self

    def settings(self) -> dict:
        """What :func:`~digitbatch.patchfeatures.patch_features` takes besides the arrays."""
        return {"patch": int(self.patch), "stride": int(self.stride), "grid": int(self.grid),
                "threshold": float(self.threshold), "scale": float(self.scale_)}

    def _features(self, X, dtype):
        return PF.patch_features(X, self.filters_, self.bias_, dtype=dtype, **self.settings())

    def transform(self, X):
        return self._features(X, np.float64)


class AugmentedPipeline(Pipeline):
    """A Pipeline whose last step also learns from distorted copies of the training rows.

    ``fit`` fits the steps before the classifier on the training rows as
    given (the filters, PCA and landmarks describe real digits), then
    builds the classifier's training matrix a chunk of ``chunk`` rows at a
    time: each chunk and ``copies`` distortions of it
    (:func:`digitbatch.augment.distort` with ``rotate``, ``scale`` and
    ``elastic``, seeded by ``random_state``) through those steps. Only the
    transformed rows are kept, never the distorted images. Scoring is the
    plain pipeline's: the copies exist at fit time only.
    """

    def __init__(self, steps, *, copies: int = 0, rotate: float = 10.0, scale: float = 0.1,
                 elastic: float = 2.0, chunk: int = 8192, random_state: int = 0,
                 transform_input=None, memory=None, verbose=False):
        super().__init__(steps, transform_input=transform_input, memory=memory,
                         verbose=verbose)
        self.copies = copies
        self.rotate = rotate
        self.scale = scale
        self.elastic = elastic
        self.chunk = chunk
        self.random_state = random_state

    def fit(self, X, y=None, **params):
        if isinstance(self.copies, bool) or not isinstance(self.copies, (int, np.integer)) \
                or self.copies < 0:
            raise ValueError(f"copies must be an integer >= 0; got {self.copies!r}")
        if self.copies == 0:
            return super().fit(X, y, **params)
        from .augment import distort

        X, y = np.asarray(X), np.asarray(y)
        before = Pipeline(self.steps[:-1]).fit(X, y)
        n, reps = X.shape[0], self.copies + 1
        rng = np.random.default_rng(self.random_state)
        Z = None
        for a in range(0, n, self.chunk):
            x = X[a:a + self.chunk]
            for j in range(reps):
                part = x if j == 0 else distort(x, rng, rotate=self.rotate, scale=self.scale,
                                                 elastic=self.elastic)
                z = before.transform(part)
                if Z is None:
                    Z = np.empty((n * reps, z.shape[1]), np.float64)
                Z[j * n + a:j * n + a + x.shape[0]] = z
        log.info("fitting the classifier on %d rows (%d distorted copies of each of %d)",
                 n * reps, self.copies, n)
        self.steps[-1][1].fit(Z, np.tile(y, reps))
        return self


def make_patch_pipeline(*, random_state: int = 0, pca_components: int = 100,
                        n_components: int = 2000, gamma: float = 0.1, alpha: float = 1e-6,
                        max_iter: int = 60, copies: int = 0, rotate: float = 10.0,
                        scale: float = 0.1, elastic: float = 2.0, **features):
    """The unfitted ``sgd-patches`` pipeline on (n, 784) uint8 images.

    :class:`PatchFeatures` (``features``: its parameters) -> ``PCA`` ->
    ``Nystroem(kernel="rbf")`` -> hinge ``SGDClassifier`` (``tol=None``:
    exactly ``max_iter`` epochs), the head of
    :func:`digitbatch.features.make_kernel_pipeline`; an
    :class:`AugmentedPipeline` that adds ``copies`` distortions of each
    training row (``rotate``, ``scale``, ``elastic``) to the classifier's fit.
    """
    from .features import make_kernel_pipeline

    pipe = make_kernel_pipeline(random_state=random_state, features=False,
                                pca_components=pca_components, n_components=n_components,
                                gamma=gamma, alpha=alpha, max_iter=max_iter)
    steps = [("features", PatchFeatures(random_state=random_state, **features)), *pipe.steps]
    return AugmentedPipeline(steps, copies=copies, rotate=rotate, scale=scale, elastic=elastic,
                             random_state=random_state)
