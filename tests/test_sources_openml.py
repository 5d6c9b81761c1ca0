"""Tests of digitbatch.sources.openml, never touching the network.

As scikit-learn's own ``sklearn/datasets/tests/test_openml.py`` does,
``sklearn.datasets._openml.urlopen`` is monkeypatched. Instead of shipped
fixture files, :func:`_openml_site` builds the responses of a tiny
"mnist_784"-like data set in memory (gzipped JSON for the API calls,
gzipped ARFF for the data file, its md5 in the description), and
:class:`_FakeOpenML` answers requests from them; anything else gets
OpenML's HTTP 412 "not found". Every test passes ``data_home=tmp_path`` so
that scikit-learn's cache stays inside the test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from io import BytesIO
from types import SimpleNamespace
from urllib.error import HTTPError, URLError

import numpy as np
import pytest
from sklearn.datasets import _openml as sk_openml

from digitbatch.errors import OpenMLError, SourceError
from digitbatch.sources.base import Batch
from digitbatch.sources import openml as openml_source
from digitbatch.sources.openml import (
    OpenMLData,
    _convert_labels,
    _convert_pixels,
    load_openml,
    mnist_splits,
)

API = "https://www.openml.org/api/v1/json/data"
DATA_ID = 554  # mnist_784's real data_id
FILE_ID = 52667
N_ROWS = 12


def _pixels(n_rows: int = N_ROWS, n_cols: int = 784) -> np.ndarray:
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, size=(n_rows, n_cols))
    px[0, :2] = (0, 255)  # both ends of the range appear
    return px


def _arff(pixels, labels, *, numeric_class: bool = False) -> bytes:
    """A dense ARFF file like OpenML's mnist_784.arff."""
    n_cols = len(pixels[0])
    classes = sorted({str(v) for v in labels} | {str(d) for d in range(10)})
    lines = ["@RELATION mnist_784", ""]
    lines += [f"@ATTRIBUTE pixel{j + 1} NUMERIC" for j in range(n_cols)]
    nominal = "{" + ",".join(classes) + "}"
    lines.append("@ATTRIBUTE class " + ("NUMERIC" if numeric_class else nominal))
    lines += ["", "@DATA"]
    lines += [",".join([*(str(v) for v in row), str(lab)]) for row, lab in zip(pixels, labels)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _features(n_cols: int, labels, *, numeric_class: bool) -> dict:
    feature = [
        {"index": str(j), "name": f"pixel{j + 1}", "data_type": "numeric",
         "is_target": "false", "is_ignore": "false", "is_row_identifier": "false",
         "number_of_missing_values": "0"}
        for j in range(n_cols)
    ]
    target = {"index": str(n_cols), "name": "class", "is_target": "true",
              "is_ignore": "false", "is_row_identifier": "false",
              "number_of_missing_values": "0"}
    if numeric_class:
        target["data_type"] = "numeric"
    else:
        classes = sorted({str(v) for v in labels} | {str(d) for d in range(10)})
        target.update(data_type="nominal", nominal_values=json.dumps(classes))
    return {"data_features": {"feature": [*feature, target]}}


def _openml_site(pixels=None, labels=None, *, name: str = "mnist_784",
                 numeric_class: bool = False) -> dict[str, bytes]:
    """URL -> uncompressed response body, for one data set, version 1."""
    pixels = _pixels() if pixels is None else pixels
    labels = [str(i % 10) for i in range(len(pixels))] if labels is None else labels
    arff = _arff(pixels, labels, numeric_class=numeric_class)
    data_url = f"https://www.openml.org/data/v1/download/{FILE_ID}/{name}.arff"
    listing = {"data": {"dataset": [{"did": DATA_ID, "name": name, "version": 1,
                                     "status": "active", "format": "ARFF"}]}}
    description = {"data_set_description": {
        "id": str(DATA_ID), "name": name, "version": "1", "format": "ARFF",
        "description": "a tiny mnist_784 look-alike for tests",
        "url": data_url, "file_id": str(FILE_ID), "default_target_attribute": "class",
        "status": "active",
        # scikit-learn checks the md5 of the *uncompressed* ARFF file
        "md5_checksum": hashlib.md5(arff).hexdigest(),
    }}
    qualities = {"data_qualities": {"quality": [
        {"name": "NumberOfInstances", "value": f"{len(pixels)}.0"},
        {"name": "NumberOfFeatures", "value": f"{len(pixels[0]) + 1}.0"},
    ]}}
    as_json = lambda obj: json.dumps(obj).encode("utf-8")  # noqa: E731
    return {
        f"{API}/list/data_name/{name}/limit/2/data_version/1": as_json(listing),
        f"{API}/list/data_name/{name}/limit/2/status/active/": as_json(listing),
        f"{API}/{DATA_ID}": as_json(description),
        f"{API}/features/{DATA_ID}": as_json(_features(len(pixels[0]), labels,
                                                       numeric_class=numeric_class)),
        f"{API}/qualities/{DATA_ID}": as_json(qualities),
        data_url: arff,
    }


class _Response:
    """Just what ``_open_openml_url`` uses of an HTTP response."""

    def __init__(self, body: bytes):
        self._fp = BytesIO(gzip.compress(body))

    def read(self, amt=-1):
        return self._fp.read(amt)

    def info(self):
        return {"Content-Encoding": "gzip"}

    def close(self):
        self._fp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeOpenML:
    """A stand-in for ``urlopen``: serves ``site``, records the URLs asked."""

    def __init__(self, site: dict[str, bytes] | None = None, error: Exception | None = None):
        self.site = site or {}
        self.error = error
        self.urls: list[str] = []

    def __call__(self, request, *args, **kwargs):
        url = request.get_full_url()
        self.urls.append(url)
        if self.error is not None:
            raise self.error
        if url not in self.site:
            # OpenML answers "no such data set" with its own HTTP 412
            raise HTTPError(url, 412, "Precondition Failed", None, BytesIO())
        return _Response(self.site[url])


@pytest.fixture
def serve(monkeypatch):
    """``serve(site_or_error)`` installs a fake OpenML; returns it."""

    def install(site=None, *, error=None) -> _FakeOpenML:
        fake = _FakeOpenML(site, error)
        monkeypatch.setattr(sk_openml, "urlopen", fake)
        return fake

    # scikit-learn sleeps 1 s between its network retries
    monkeypatch.setattr(sk_openml, "time", SimpleNamespace(sleep=lambda s: None))
    return install


# --- happy path --------------------------------------------------------------


def test_load_converts_and_caches(serve, tmp_path):
    pixels = _pixels()
    fake = serve(_openml_site(pixels))
    data = load_openml(data_home=tmp_path)

    assert isinstance(data, OpenMLData)
    assert data.images.shape == (N_ROWS, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.shape == (N_ROWS,) and data.labels.dtype == np.int8
    np.testing.assert_array_equal(data.images, pixels.reshape(N_ROWS, 28, 28))
    np.testing.assert_array_equal(data.labels, np.arange(N_ROWS) % 10)
    assert data.keys == [f"openml:{DATA_ID}:{i}" for i in range(N_ROWS)]
    assert data.description == {
        "kind": "openml", "name": "mnist_784", "version": 1, "data_id": DATA_ID,
        "url": f"https://www.openml.org/d/{DATA_ID}", "n": N_ROWS,
    }
    assert data.splits == {}
    assert data.n == N_ROWS
    # listing, description, features, qualities, data (scikit-learn opens
    # the cached data file twice but downloads it once)
    assert len(fake.urls) == 5, fake.urls
    assert (tmp_path / "openml" / "openml.org").is_dir()  # scikit-learn's cache

    # Second call: everything comes from the cache in data_home.
    offline = serve(error=URLError("no network in this test"))
    again = load_openml(data_home=str(tmp_path))
    assert offline.urls == []
    np.testing.assert_array_equal(again.images, data.images)
    np.testing.assert_array_equal(again.labels, data.labels)
    assert again.keys == data.keys


def test_active_version_and_batch(serve, tmp_path):
    serve(_openml_site())
    data = load_openml(version="active", data_home=tmp_path)
    assert data.description["version"] == 1  # the version served, not "active"
    batch = data.to_batch()
    assert isinstance(batch, Batch) and len(batch) == N_ROWS


def test_numeric_class_column_is_accepted(serve, tmp_path):
    # some OpenML uploads store the digit as a NUMERIC attribute
    serve(_openml_site(labels=[i % 10 for i in range(N_ROWS)], numeric_class=True))
    data = load_openml(data_home=tmp_path)
    np.testing.assert_array_equal(data.labels, np.arange(N_ROWS) % 10)


def test_pandas_is_not_needed(serve, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` fails
    serve(_openml_site())
    assert load_openml(data_home=tmp_path).n == N_ROWS


@pytest.mark.parametrize(
    "n, expected",
    [
        (70_000, {"train": (0, 60_000), "test": (60_000, 70_000)}),  # mnist_784
        (69_999, {}),  # not the MNIST row count: no convention to apply
        (0, {}),
    ],
)
def test_mnist_splits(n, expected):
    assert mnist_splits(n) == expected


# --- data that is not MNIST --------------------------------------------------


def _with(value, row=3, col=17):
    px = _pixels().astype(object)
    px[row, col] = value
    return px


@pytest.mark.parametrize(
    "pixels, labels, match",
    [
        # a fractional intensity
        (_with(12.5), None, r"pixel value 12\.5 at row 3, column 17 \(pixel18\)"),
        # beyond 8 bits
        (_with(300), None, r"pixel value 300\.0 at row 3, column 17"),
        # negative
        (_with(-1, row=0, col=0), None, r"pixel value -1\.0 at row 0, column 0"),
        # ARFF missing value '?' -> NaN
        (_with("?"), None, r"pixel value nan at row 3"),
        # 10x10 images, not 28x28
        (_pixels(n_cols=100), None, r"shape \(12, 100\).*not a data set of 28x28 images"),
        # a label that is not a digit
        (None, [str(i % 10) for i in range(5)] + ["x"] * 7, r"label 'x' at row 5"),
    ],
)
def test_bad_data_is_refused(serve, tmp_path, pixels, labels, match):
    serve(_openml_site(pixels, labels))
    with pytest.raises(OpenMLError, match=match):
        load_openml(data_home=tmp_path)


def test_pixel_check_counts_rows_across_blocks(monkeypatch):
    monkeypatch.setattr(openml_source, "CHECK_ROWS", 5)  # blocks [0, 5), [5, 10), [10, 12)
    X = _pixels().astype(np.float64)
    np.testing.assert_array_equal(_convert_pixels(X, "data set").reshape(N_ROWS, -1), X)
    X[7, 3] = 256
    with pytest.raises(OpenMLError, match=r"pixel value 256\.0 at row 7, column 3"):
        _convert_pixels(X, "data set")


@pytest.mark.parametrize(
    "y, match",
    [
        (np.array([1.0, 2.5]), r"label 2\.5 at row 1"),  # numeric, not integral
        (np.array([3, 10]), r"label 10 at row 1"),  # numeric, out of range
        (np.array(["1", "12"], dtype=object), r"label '12' at row 1"),  # two digits
        (np.array(["1", None], dtype=object), r"label None at row 1"),  # missing
        (np.array([True, False]), r"label True at row 0"),  # booleans are not digits
    ],
)
def test_convert_labels_refuses(y, match):
    with pytest.raises(OpenMLError, match=match):
        _convert_labels(y, len(y), "data set")


# --- failures of OpenML ------------------------------------------------------


@pytest.mark.filterwarnings("ignore:A network error occurred:UserWarning")
@pytest.mark.filterwarnings("ignore:Invalid cache:RuntimeWarning")
@pytest.mark.parametrize(
    "error",
    [
        URLError("[Errno -3] Temporary failure in name resolution"),  # offline
        HTTPError(f"{API}/list", 503, "Service Unavailable", None, BytesIO()),  # server down
        ConnectionResetError(104, "Connection reset by peer"),  # dropped connection
    ],
)
def test_network_failure_says_how_to_work_offline(serve, tmp_path, error):
    serve(error=error)
    with pytest.raises(OpenMLError) as info:
        load_openml(data_home=tmp_path)
    msg = str(info.value)
    assert "downloading OpenML data set 'mnist_784' version 1" in msg
    assert "failed" in msg and "www.openml.org" in msg
    assert "--data-home" in msg and "digitbatch ingest DIR_WITH_IDX_FILES" in msg
    assert isinstance(info.value.__cause__, OSError)
    # nothing half-downloaded is left to be mistaken for a cached copy
    assert not list(tmp_path.rglob("*.gz"))


def test_unknown_data_set(serve, tmp_path):
    serve(_openml_site())
    with pytest.raises(OpenMLError, match=r"'nope' version 1 could not be loaded.*not found"):
        load_openml(name="nope", data_home=tmp_path)


@pytest.mark.filterwarnings("ignore:A network error occurred:UserWarning")
def test_corrupt_cache_is_reported(serve, tmp_path):
    serve(_openml_site())
    load_openml(data_home=tmp_path)
    (cached,) = tmp_path.rglob("*.arff.gz")
    cached.write_bytes(gzip.compress(b"@RELATION other\n"))
    serve(error=URLError("offline"))  # re-download impossible
    with pytest.raises(OpenMLError, match="failed"), \
            pytest.warns(RuntimeWarning, match="Invalid cache"):
        load_openml(data_home=tmp_path)


def test_unusable_data_home(serve, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    fake = serve(_openml_site())
    with pytest.raises(OpenMLError, match=r"could not read or write the OpenML cache in data_home"):
        load_openml(data_home=not_a_dir)
    assert fake.urls == []


# --- arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": None}, "name must be a non-empty string"),
        ({"version": 0}, "version must be a positive integer or 'active', got 0"),
        ({"version": True}, "got True"),  # bool is not a version
        ({"version": "latest"}, "got 'latest'"),
        ({"version": 1.0}, "got 1.0"),
        ({"data_home": 3}, "data_home must be a path or None"),
    ],
)
def test_bad_arguments(serve, kwargs, match):
    fake = serve(error=AssertionError("must not be reached"))
    with pytest.raises(OpenMLError, match=match) as info:
        load_openml(**kwargs)
    assert isinstance(info.value, (ValueError, SourceError))
    assert fake.urls == []
