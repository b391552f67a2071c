"""TensorFlow Serving's REST JSON in Python: predict bodies to input arrays, output
arrays to response bodies, version status and metadata as TF Serving prints them.

The rules are TF Serving's own (tensorflow_serving/util/json_tensor.cc and
model_servers/http_rest_api_util.cc), so that a client written for TF Serving works
against this server unchanged:
  - row format ``{"instances": [...]}``, one element per batch item: plain values when
    the signature has one input, objects keyed by input name when it has several;
    answered by ``{"predictions": [...]}`` (values, or objects keyed by output name);
  - columnar format ``{"inputs": value or {name: value}}``, answered by ``{"outputs": ...}``;
  - DT_STRING values are JSON strings or ``{"b64": "..."}``; a DT_STRING output whose
    name ends in ``_bytes`` is written as ``{"b64": "..."}``.
Stricter than TF Serving where the model would only fail later, or worse, not fail:
an input must have the signature's rank and fixed sizes, hold no NaN or infinity, and
not be empty.
"""
from __future__ import annotations

import base64
import binascii
import json

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
# numpy kinds accepted for a signature dtype's kind: JSON numbers for floats, integers for
# integers (TF Serving refuses 1.5 for DT_INT32), true/false only for DT_BOOL.
ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


class RestError(Exception):
    """A request that did not succeed: the HTTP status and the message of ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _brief(value) -> str:
    """A JSON value as error messages quote it, cut short: inputs may be megabytes."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def parse_body(body: bytes) -> dict:
    """The JSON object of a predict request."""
    if not body.strip():
        raise RestError(400, "JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and bad UTF-8
        raise RestError(400, f"JSON Parse error: {error}") from None
    if not isinstance(document, dict):
        raise RestError(400, f"JSON Value: {_brief(document)} Is not object")
    return document


def signature_name(document: dict) -> str:
    """The requested signature; absent or empty means serving_default, as in TF Serving."""
    name = document.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(name, str):
        raise RestError(400, "'signature_name' key must be a string value.")
    return name


def request_inputs(document: dict, specs: dict) -> tuple[dict, bool]:
    """The input arrays of a predict request, and whether it used the row format.

    ``specs``: the signature's inputs, name -> ``tf.TensorSpec``."""
    if "instances" in document and "inputs" in document:
        raise RestError(400, "Not formatted correctly: expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in document:
        return _from_instances(document["instances"], specs), True
    if "inputs" in document:
        return _from_inputs(document["inputs"], specs), False
    raise RestError(400, "Missing 'inputs' or 'instances' key")


def _from_instances(instances, specs: dict) -> dict:
    if not isinstance(instances, list):
        raise RestError(400, "Expecting 'instances' to be an list/array")
    if not instances:
        raise RestError(400, "No values in 'instances' array")
    names = sorted(specs)
    if len(names) == 1 and not (isinstance(instances[0], dict) and not _is_b64(instances[0])):
        for index, instance in enumerate(instances):
            if isinstance(instance, dict) and not _is_b64(instance):
                raise RestError(400, f"Expecting value/list but got object at item {index} of input list")
        return {names[0]: _to_array(instances, specs[names[0]], names[0])}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or _is_b64(instance) or sorted(instance) != names:
            raise RestError(400, f"Failed to process element: {index} of 'instances' list: expecting an object "
                                 f"with the keys {', '.join(names)}")
    return {name: _to_array([instance[name] for instance in instances], specs[name], name) for name in names}


def _from_inputs(inputs, specs: dict) -> dict:
    names = sorted(specs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        for name in names:
            if name not in inputs:
                raise RestError(400, f"Missing named input: {name} in 'inputs' object.")
        return {name: _to_array(inputs[name], specs[name], name) for name in names}
    if len(names) > 1:
        raise RestError(400, "inputs is a plain value/list, but expecting an object as multiple input tensors "
                             f"required ({', '.join(names)})")
    return {names[0]: _to_array(inputs, specs[names[0]], names[0])}


def _dtype_name(dtype) -> str:
    return f"DT_{dtype.name.upper()}"


def _to_array(value, spec, name: str) -> np.ndarray:
    """A JSON value (the batch dimension included) as an array of the spec's dtype, checked against its shape."""
    if spec.dtype.name == "string":
        array = _strings(value, name)
    else:
        array = _numbers(value, spec.dtype, name)
    if spec.shape.rank is not None:
        expected = [-1 if size is None else size for size in spec.shape.as_list()]
        if array.ndim != len(expected) or any(e not in (-1, a) for a, e in zip(array.shape, expected)):
            raise RestError(400, f"input '{name}' has shape {list(array.shape)}; the signature expects "
                                 f"{expected} (-1: any size)")
    if array.size == 0:
        raise RestError(400, f"input '{name}' is empty (shape {list(array.shape)})")
    return array


def _numbers(value, dtype, name: str) -> np.ndarray:
    try:
        array = np.array(value)
    except ValueError:  # numpy refuses nested lists of unequal lengths
        raise RestError(400, f"input '{name}': nested lists of unequal lengths; a tensor must be rectangular") \
            from None
    target = np.dtype(dtype.as_numpy_dtype)
    if array.dtype.kind not in ACCEPTED_KINDS.get(target.kind, ""):
        raise RestError(400, f"input '{name}': JSON values {_brief(value)} are not of expected type: "
                             f"{_dtype_name(dtype)}")
    if target.kind == "f" and not np.isfinite(array).all():
        raise RestError(400, f"input '{name}' contains NaN or infinite values")
    if target.kind in "iu" and array.size and not (np.iinfo(target).min <= array.min() <= array.max()
                                                   <= np.iinfo(target).max):
        raise RestError(400, f"input '{name}': values out of range for {_dtype_name(dtype)}")
    return array.astype(target, copy=False)


def _dense_shape(value) -> list[int]:
    """Sizes along the first elements, as TF Serving infers a tensor's shape."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _strings(value, name: str) -> np.ndarray:
    def leaf(item):
        if isinstance(item, str):
            return item.encode()
        if _is_b64(item):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except binascii.Error:
                raise RestError(400, f"input '{name}': Unable to base64 decode") from None
        raise RestError(400, f"input '{name}': JSON Value: {_brief(item)} is not of expected type: DT_STRING")

    def convert(item):
        return [convert(element) for element in item] if isinstance(item, list) else leaf(item)

    array = np.empty(0, object)
    try:
        array = np.array(convert(value), dtype=object)
    except ValueError:
        pass  # ragged: reported below
    if list(array.shape) != _dense_shape(value) or not all(isinstance(item, bytes) for item in array.flat):
        raise RestError(400, f"input '{name}': nested lists of unequal lengths; a tensor must be rectangular")
    return array


def _short_doubles(array: np.ndarray) -> np.ndarray:
    """float32 values as the doubles nearest their 6 significant digits where those read
    back as the same float32, else their 9 (always enough): how TF Serving prints floats
    (``0.05``, not float32's exact ``0.05000000074505806``), a third shorter and faster to print."""
    values = array.astype(np.float64)
    usable = np.isfinite(values) & (values != 0)
    with np.errstate(all="ignore"):
        exponent = np.floor(np.log10(np.abs(np.where(usable, values, 1.0))))

        def rounded(digits):
            scale = 10.0 ** (digits - 1 - exponent)
            return np.round(values * scale) / scale

        six = rounded(6)
        short = np.where(six.astype(np.float32) == array, six, rounded(9))
        return np.where(usable & (short.astype(np.float32) == array), short, values)


def _json_values(name: str, array: np.ndarray):
    """An output as JSON values: ``_bytes`` strings as ``{"b64": ...}``, other strings as text."""
    if array.dtype == np.float32:
        return _short_doubles(array).tolist()
    if array.dtype != object:
        return array.tolist()
    if name.endswith("_bytes"):
        return np.vectorize(lambda data: {"b64": base64.b64encode(data).decode("ascii")}, otypes=[object])(
            array).tolist()
    return np.vectorize(lambda data: data.decode("utf-8", "replace"), otypes=[object])(array).tolist()


def response_body(outputs: dict, row: bool) -> bytes:
    """The JSON answer to a predict request in the request's own format."""
    values = {name: _json_values(name, outputs[name]) for name in sorted(outputs)}
    single = next(iter(values.values())) if len(values) == 1 else None
    if row:
        answer = {"predictions": single if single is not None else [dict(zip(values, item))
                                                                   for item in zip(*values.values())]}
    else:
        answer = {"outputs": single if single is not None else values}
    return json.dumps(answer, separators=(",", ":")).encode()  # compact: audio answers hold millions of numbers


def status_json(states: dict) -> dict:
    """GetModelStatusResponse as TF Serving prints it; ``states``: version -> (state, error message),
    the state "AVAILABLE", "LOADING", "END", ...; an error message makes the error code UNKNOWN."""
    return {"model_version_status": [
        {"version": str(version), "state": state,
         "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error}}
        for version, (state, error) in sorted(states.items(), reverse=True)]}


# The metadata field beside TF Serving's "signature_def" that carries an export's facts
# (assets/model.json: sample rate, channels, chunk plan, ...); serve.client cuts songs on
# their chunk plan. TF Serving itself prints signature_def only.
MODEL_FACTS_FIELD = "model_facts"


def metadata_json(name: str, version: int, signature_defs: dict, facts: dict | None = None) -> dict:
    """GetModelMetadataResponse as TF Serving prints it; ``signature_defs``: each SignatureDef as JSON.
    ``facts``: the export's facts, added as the metadata field ``model_facts`` (TF Serving's
    clients read the fields they know and pass over the others)."""
    metadata = {"signature_def": {"signature_def": signature_defs}}
    if facts:
        metadata[MODEL_FACTS_FIELD] = facts
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)}, "metadata": metadata}
