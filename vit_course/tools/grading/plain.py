"""Plain data across the sandbox wall: JSON, with arrays as raw little-endian bytes, never pickle.

``to_plain`` turns what a student's function returned (numbers, strings, ``None``, lists,
tuples, dicts with string keys, NumPy arrays, torch tensors, dataclasses, named tuples) into
JSON-ready data; ``from_plain`` reads it back as plain Python and NumPy (or torch) values.
Nothing in a file written by a student's kernel is ever executed: ``from_plain`` only builds
numbers, strings, lists, dicts and arrays of a numeric dtype, and checks sizes first.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

ARRAY = "__array__"
OBJECT = "__object__"
MAX_DEPTH = 12
MAX_TEXT_BYTES = 64 << 20  # a results file larger than this is refused unread


def _encode_array(value: Any, kind: str) -> dict:
    if kind == "tensor":
        value = value.detach().cpu()
        if not value.dtype.is_floating_point and not value.dtype.is_complex:
            arr = value.numpy()
        else:
            arr = value.double().numpy() if value.dtype.itemsize < 4 else value.numpy()  # float16/bfloat16
    else:
        arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"arrays of dtype {arr.dtype} cannot be graded (numbers only)")
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return {ARRAY: kind, "dtype": arr.dtype.str, "shape": list(arr.shape),
            "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def to_plain(value: Any, depth: int = 0) -> Any:
    """JSON-ready copy of ``value``; raises ``TypeError`` for anything else (functions, objects)."""
    if depth > MAX_DEPTH:
        raise TypeError(f"the value is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, str)):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "detach") and hasattr(value, "dtype") and hasattr(value, "cpu"):
        return _encode_array(value, "tensor")
    if isinstance(value, (np.ndarray, np.generic)):
        return _encode_array(value, "array")
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("dict keys must be strings to be graded")
        return {str(k): to_plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a named tuple
        return {OBJECT: type(value).__name__, "fields": to_plain(dict(value._asdict()), depth + 1)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, depth + 1) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {OBJECT: type(value).__name__, "fields": to_plain(fields, depth + 1)}
    raise TypeError(f"a {type(value).__name__} cannot be graded (return numbers, tensors, lists or dicts)")


def dumps(value: Any) -> str:
    """``json.dumps(to_plain(value))``."""
    return json.dumps(to_plain(value))


def _decode_array(obj: dict, as_torch: bool) -> Any:
    dtype = np.dtype(str(obj.get("dtype")))
    shape = obj.get("shape")
    if dtype.kind not in "biuf" or not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError("malformed array")
    raw = base64.b64decode(str(obj.get("data", "")), validate=True)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise ValueError("array bytes do not match its shape and dtype")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if as_torch and obj[ARRAY] == "tensor":
        import torch

        return torch.from_numpy(arr)
    return arr


def from_plain(data: Any, as_torch: bool = False, resolve: Callable[[dict], Any] | None = None,
               depth: int = 0) -> Any:
    """Read ``to_plain`` output back: arrays as NumPy (tensors as torch when ``as_torch``),
    objects as dicts of their fields; ``resolve(obj)`` may replace other tagged dicts."""
    if depth > MAX_DEPTH + 2:
        raise ValueError("nested too deeply")
    if isinstance(data, list):
        return [from_plain(v, as_torch, resolve, depth + 1) for v in data]
    if not isinstance(data, dict):
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        raise ValueError(f"unexpected {type(data).__name__}")
    if ARRAY in data:
        return _decode_array(data, as_torch)
    if OBJECT in data:
        return from_plain(data.get("fields", {}), as_torch, resolve, depth + 1)
    if resolve is not None and any(k.startswith("__") for k in data):
        return resolve(data)
    return {k: from_plain(v, as_torch, resolve, depth + 1) for k, v in data.items()}


def loads(text: str, as_torch: bool = False, resolve: Callable[[dict], Any] | None = None) -> Any:
    """``from_plain(json.loads(text))``, refusing texts over ``MAX_TEXT_BYTES``."""
    if len(text) > MAX_TEXT_BYTES:
        raise ValueError(f"more than {MAX_TEXT_BYTES >> 20} MB of results")
    return from_plain(json.loads(text), as_torch, resolve)
