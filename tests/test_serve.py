"""`bertzoo serve` as users run it: the real command on a free localhost port, real HTTP.
Answers equal the Predictor's rows (also for concurrent requests, which the server batches);
every kind of bad request is a 4xx JSON error naming the field, and the server keeps
answering."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from bertzoo.inference import load
from bertzoo.serving import MAX_BODY_BYTES, MAX_INPUTS, MAX_TEXT_CHARS
from doc_scripts import load_doc_script
from test_inference import assert_close, train_and_predict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, path: str, body: bytes | None = None,
            content_type: str = "application/json") -> tuple[int, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers={"Content-Type": content_type} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as err:
        text, status = err.read().decode(), err.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def predict(port: int, inputs) -> tuple[int, object]:
    return request(port, "/predict", json.dumps({"inputs": inputs}).encode())


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone_dir):
    """The classification example model, served by `bertzoo serve` in its own process."""
    folder = tmp_path_factory.mktemp("serve")
    task = train_and_predict("classification", folder, tiny_backbone_dir)
    port = free_port()
    log = open(folder / "serve.log", "w")
    command = [sys.executable, "-c", "import sys; from bertzoo.cli import main; "
                                     "sys.exit(main())",
               "serve", str(task.run), "--port", str(port), "--max-batch-size", "4",
               "--batch-timeout", "0.05"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, \
                f"bertzoo serve exited: {(folder / 'serve.log').read_text()[-3000:]}"
            try:
                if request(port, "/health") == (200, "ok"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "bertzoo serve did not become healthy"
            time.sleep(0.5)
        yield port, task
    finally:
        os.killpg(process.pid, signal.SIGINT)  # the server and the workers it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_answers_equal_the_predictor_rows(served):
    port, task = served
    expected = load(task.run)(task.inputs)
    status, body = predict(port, task.inputs)
    assert status == 200, body
    assert_close(body["predictions"], expected, "predictions")
    # Concurrent single-input requests are batched on the server; each gets its own answer.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda value: predict(port, [value]), task.inputs))
    for answer, row in zip(answers, expected):
        assert answer[0] == 200, answer
        assert_close(answer[1]["predictions"], [{**row, "index": 0}], "predictions")
    status, schema = request(port, "/openapi.json")
    assert status == 200
    items = schema["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]["items"]
    assert items["oneOf"][0] == {"type": "string"}


BAD_REQUESTS = [
    # (what, body, content type, status, field, fragment of the message)
    ("invalid JSON", b'{"inputs": [', "application/json", 422, "body", "invalid JSON"),
    ("not JSON at all", b"inputs=a", "application/x-www-form-urlencoded", 422, "body",
     "Content-Type: application/json"),
    ("missing field", b'{"texts": ["a"]}', "application/json", 422, "inputs",
     "the key is missing"),
    ("unknown field", b'{"inputs": ["a"], "top_k": 3}', "application/json", 422, "top_k",
     "no such key"),
    ("inputs not a list", b'{"inputs": "a"}', "application/json", 422, "inputs",
     "expected a list of inputs, found a string 'a'"),
    ("body not an object", b'["a"]', "application/json", 422, "body", "found a list"),
    ("wrong input type", b'{"inputs": ["a", 5]}', "application/json", 422, "inputs[1]",
     'expected a text, or {"text"'),
    ("wrong field type", b'{"inputs": [{"text": ["a"]}]}', "application/json", 422,
     "inputs[0].text", "expected a string, found a list"),
    ("pair for a single-text model", b'{"inputs": [{"text": "a", "text_pair": "b"}]}',
     "application/json", 422, "inputs[0].text_pair", "no second text"),
    ("empty list", b'{"inputs": []}', "application/json", 422, "inputs",
     "expected a non-empty list"),
    ("too many inputs", json.dumps({"inputs": ["a"] * (MAX_INPUTS + 1)}).encode(),
     "application/json", 422, "inputs", f"at most {MAX_INPUTS} inputs"),
    ("over-long text", json.dumps({"inputs": ["a" * (MAX_TEXT_CHARS + 1)]}).encode(),
     "application/json", 422, "inputs[0]", f"at most {MAX_TEXT_CHARS} characters"),
    ("body over the limit", json.dumps({"inputs": ["a b " * (MAX_BODY_BYTES // 4)]}).encode(),
     "application/json", 413, "body", f"at most {MAX_BODY_BYTES} bytes"),
]


@pytest.mark.parametrize("what,body,content_type,status,field,message", BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_are_4xx_naming_the_field(served, what, body, content_type, status,
                                               field, message):
    port, task = served
    got_status, answer = request(port, "/predict", body, content_type)
    assert got_status == status, (what, answer)
    assert isinstance(answer, dict) and answer["field"] == field, (what, answer)
    assert message in answer["error"], (what, answer)
    # ... and the next request is answered.
    assert predict(port, task.inputs[:1])[0] == 200
    assert request(port, "/health") == (200, "ok")


def test_load_check_script_on_a_tiny_setting(served, tmp_path):
    """docs/serving_load.py end to end, 2 clients x 3 requests, batching on and off."""
    _, task = served
    serving_load = load_doc_script("serving_load.py")
    out = tmp_path / "load.json"
    assert serving_load.main(["--model", str(task.run), "--clients", "2", "--requests", "3",
                              "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for mode in ("batching on", "batching off"):
        assert figures[mode]["answered"] == figures[mode]["sent"] == 6
        assert figures[mode]["wrong"] == figures[mode]["failed"] == 0
    assert figures["predictor"]["sentences_per_s"] > 0


def test_an_unexpected_failure_is_a_422_and_a_traceback_in_the_server_log(caplog):
    """Inputs that pass the schema but make the model fail: the client gets a 422 with the
    error's message; the server's log gets the traceback (the client's message alone would not
    tell an operator where it came from)."""
    from types import SimpleNamespace

    from bertzoo.serving import _failure

    def predictor(inputs):
        raise RuntimeError("tokenizer gave up")
    predictor.inputs = SimpleNamespace(description="a list of sentences")
    with caplog.at_level("ERROR", logger="bertzoo.serve"):
        response = _failure(["a sentence"], predictor)
    assert response.status_code == 422
    assert json.loads(response.body) == {"error": "RuntimeError: tokenizer gave up",
                                         "field": "inputs", "expected": "a list of sentences"}
    [record] = caplog.records
    assert "RuntimeError: tokenizer gave up" in record.getMessage() and record.exc_info
    assert record.exc_info[0] is RuntimeError
