"""What a digit image and its label are, for every module (no Zarr import here).

:mod:`digitbatch.layout` stores these; models, kernels, sources and
``digitbatch predict`` need only the values, and importing Zarr costs a
third of a second a process.
"""

from __future__ import annotations

import numpy as np

IMAGE_SHAPE = (28, 28)
LABEL_DTYPE = np.dtype("int8")
UNKNOWN_LABEL = -1
N_CLASSES = 10
