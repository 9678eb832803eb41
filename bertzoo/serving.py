"""`bertzoo serve PATH`: a trained task model behind HTTP, on LitServe.

    POST /predict   {"inputs": [input, ...]}  ->  {"predictions": [row, ...]}
    GET  /health    "ok" once the model is loaded
    GET  /docs      the OpenAPI page (the request schema shows the task's inputs)

An input is what `bertzoo.load(PATH)` takes for the model's task (`TaskSpec.inputs`); a
prediction is the row the `Predictor` returns, the row `bertzoo predict` writes. Concurrent
requests are batched on the server (`max_batch_size` requests, waiting up to
`batch_timeout` seconds for more), and their inputs go through the model together.

Bad requests are answered 4xx with `{"error": ..., "field": ..., "expected": ...}` and never
reach the model: invalid JSON, a missing or unknown key, a wrong type, an empty or too long
list, a text over `max_text_chars`, a body over `max_body_bytes`. The inputs are checked
against the task's schema in the HTTP process (each input becomes its row there), so one
bad request never fails the others batched with it.
"""

# No `from __future__ import annotations`: LitServe hands the annotation of
# `decode_request` to FastAPI, which needs the class itself, not its name.

import logging
from typing import Any

try:
    import litserve as ls
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:
    raise ImportError("litserve is not installed: pip install 'bertzoo[serve]'") from None

from bertzoo.inference import Predictor, load
from bertzoo.tasks.inputs import MISSING, Found, InputError, describe

log = logging.getLogger("bertzoo.serve")

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_INPUTS = 256  # per request: a client with more sends several requests (they batch)
MAX_TEXT_CHARS = 100_000  # per string anywhere in an input (a QA context is windowed)

# Set by `build_server` in the process that starts the HTTP servers (they are forked from it):
# the task's input check, run on every request before it is queued.
_check_inputs = None


class PredictRequest(BaseModel):
    """The body of POST /predict."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Any]

    @field_validator("inputs")
    @classmethod
    def _check(cls, inputs: list[Any]) -> list[Any]:
        if _check_inputs is not None:
            _check_inputs(inputs)
        return inputs


class InputChecker:
    """A request's inputs against the task's schema and the size limits; an InputError
    names the first bad field."""

    def __init__(self, predictor: Predictor, max_inputs: int, max_text_chars: int):
        self.schema = predictor.inputs
        self.data_args = predictor.data_args
        self.max_inputs = max_inputs
        self.max_text_chars = max_text_chars

    def __call__(self, inputs: list[Any]) -> None:
        if not inputs:
            raise InputError("inputs", f"a non-empty list, each {self.schema.description}",
                             inputs)
        if len(inputs) > self.max_inputs:
            raise InputError("inputs", f"at most {self.max_inputs} inputs per request (send "
                                       f"several requests)", Found(f"{len(inputs)} inputs"))
        for position, value in enumerate(inputs):
            self._check_lengths(value, f"inputs[{position}]")
            try:
                self.schema.to_row(value, self.data_args, position)
            except InputError as err:
                raise err.at(f"inputs[{position}]") from None

    def _check_lengths(self, value: Any, where: str) -> None:
        if isinstance(value, str) and len(value) > self.max_text_chars:
            raise InputError(where, f"a text of at most {self.max_text_chars} characters",
                             Found(f"{len(value)} characters"))
        if isinstance(value, dict):
            for key, item in value.items():
                self._check_lengths(item, f"{where}.{key}")
        if isinstance(value, list):
            for i, item in enumerate(value):
                self._check_lengths(item, f"{where}[{i}]")


class PredictorAPI(ls.LitAPI):
    """The Predictor as a LitServe API: each request's inputs, batched across requests."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32,
                 data: dict[str, Any] | None = None, max_batch_size: int = 8,
                 batch_timeout: float = 0.01):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                         api_path="/predict")
        self.path = path
        self.device_name = device
        self.batch_size = batch_size
        self.data = data

    def setup(self, device: str) -> None:  # LitServe's device: "cpu", "cuda:0", ...
        self.predictor = load(self.path, device=device, batch_size=self.batch_size,
                              data=self.data)

    def decode_request(self, request: PredictRequest) -> list[Any]:
        return request.inputs

    def batch(self, requests: list[list[Any]]) -> list[list[Any]]:
        return requests

    def unbatch(self, outputs: list[Any]) -> list[Any]:
        return outputs

    def predict(self, requests):
        if self.max_batch_size == 1:  # LitServe hands over one request, unbatched
            return self._answer([requests])[0]
        return self._answer(requests)

    def _answer(self, requests: list[list[Any]]) -> list[Any]:
        flat = [value for inputs in requests for value in inputs]
        try:
            rows = self.predictor(flat)
        except Exception:
            if len(requests) == 1:
                return [_failure(requests[0], self.predictor)]
            return [self._answer([inputs])[0] for inputs in requests]  # one at a time
        answers, start = [], 0
        for inputs in requests:
            answer = rows[start:start + len(inputs)]
            for index, row in enumerate(answer):  # positions within the request
                if "index" in row:
                    row["index"] = index
            answers.append(answer)
            start += len(inputs)
        return answers

    def encode_response(self, output) -> dict:
        if isinstance(output, JSONResponse):
            return output
        return {"predictions": output}


def _failure(inputs: list[Any], predictor: Predictor) -> JSONResponse:
    """A request the model could not answer although its inputs passed the schema (the data
    module refused them): 422 with the task's message, and the server goes on."""
    try:
        predictor(inputs)
        message = "the model could not answer these inputs"
    except InputError as err:
        return error_response(422, str(err), err.field, err.expected)
    except Exception as err:  # the task's own data errors name what is wrong
        message = f"{type(err).__name__}: {err}"
        # the client gets the message; whoever runs the server needs where it came from
        log.exception("POST /predict answered 422: %s", message)
    return error_response(422, message, "inputs", predictor.inputs.description)


def error_response(status: int, message: str, field: str, expected: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "field": field,
                                                     "expected": expected})


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors as one JSON error naming the field."""
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, InputError):
        return error_response(422, str(cause), cause.field, cause.expected)
    kind = error.get("type", "")
    where = [str(part) for part in error.get("loc", ()) if part != "body"]
    expected = '{"inputs": [...]}, a JSON object'
    if kind == "json_invalid":
        field, found = "body", f"invalid JSON ({(error.get('ctx') or {}).get('error', '')})"
    elif kind == "missing":
        field, expected, found = where[0], "a list of inputs", describe(MISSING)
    elif kind == "extra_forbidden":
        field, expected, found = where[0], 'no such key (the body has "inputs" only)', \
            describe(error.get("input"))
    elif isinstance(error.get("input"), bytes):
        field, found = "body", "a body that is not JSON (send Content-Type: application/json)"
    elif where:
        field, expected, found = where[0], "a list of inputs", describe(error.get("input"))
    else:
        field, found = "body", describe(error.get("input"))
    return error_response(422, f"{field}: expected {expected}, found {found}", field, expected)


def _http_error(max_body_bytes: int):
    async def handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            expected = f"a body of at most {max_body_bytes} bytes"
            return error_response(413, f"body: expected {expected}", "body", expected)
        return JSONResponse(status_code=exc.status_code,
                            content={"error": str(exc.detail), "field": None, "expected": None})
    return handler


def build_server(path: str, device: str = "cpu", max_batch_size: int = 8,
                 batch_timeout: float = 0.01, workers: int = 1, batch_size: int = 32,
                 data: dict[str, Any] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 max_inputs: int = MAX_INPUTS, max_text_chars: int = MAX_TEXT_CHARS):
    """A LitServer for the model at `path` (not started: call `.run(host=, port=)`). The
    model is loaded here once to fail early on a bad path and to check requests; each
    worker loads its own copy."""
    global _check_inputs
    predictor = load(path, device="cpu", batch_size=batch_size, data=data)
    _check_inputs = InputChecker(predictor, max_inputs, max_text_chars)
    api = PredictorAPI(str(path), device, batch_size, data, max_batch_size, batch_timeout)
    accelerator = {"cpu": "cpu", "auto": "auto"}.get(device, "cuda")
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=workers,
                          max_payload_size=max_body_bytes, timeout=60)
    app = server.app
    app.title = f"bertzoo {predictor.task}"
    app.description = (f"POST /predict with {{\"inputs\": [...]}}, each input "
                       f"{predictor.inputs.description}; answers {{\"predictions\": [...]}}, "
                       f"one row per input.")
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error(max_body_bytes))
    schema = app.openapi()
    request = schema.get("components", {}).get("schemas", {}).get("PredictRequest")
    if request is not None:  # the task's own schema for one input on the OpenAPI page
        request["properties"]["inputs"]["items"] = predictor.inputs.json_schema
        request["properties"]["inputs"]["minItems"] = 1
        request["properties"]["inputs"]["maxItems"] = max_inputs
    del predictor
    return server


def serve(path: str, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Serve the model at `path` until stopped (Ctrl-C)."""
    server = build_server(path, **options)
    server.run(host=host, port=port, generate_client_file=False, num_api_servers=1)
