"""Load the VM-NET authors' per-track feature pickles without running arbitrary code.

The original `librosa_feature.py` pickled one NumPy array per track under Python 2. A plain
`pickle.load` of a downloaded file can execute anything, so only the globals that a
pickled ndarray needs are allowed; Python 2 byte strings are decoded as latin-1, as NumPy
recommends for such files.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from datamodules.errors import DataError

_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
    # Python 3 writes bytes in protocol 0-2 pickles as _codecs.encode(text, "latin1").
    ("_codecs", "encode"),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global that a pickled feature array never needs."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise _ForbiddenGlobal(f"{module}.{name}")
        module = module.replace("numpy.core.", "numpy._core.")
        module = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
        return super().find_class(module, name)


def load_array_pickle(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as e:
        raise DataError(
            f"{path}: refusing to load pickle: it references {e}, which a NumPy feature "
            "array never needs (nothing was executed)"
        ) from None
    except Exception as e:
        raise DataError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from None
    try:
        return np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: pickle holds {type(obj).__name__}, not a feature array") from None
