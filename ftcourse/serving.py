"""Serving: one base model and several LoRA adapters behind an OpenAI-compatible HTTP endpoint,
run by llama.cpp's server (llama-cpp-python[server]) on 127.0.0.1.

Each adapter is one of the server's "models", named after its task, all on the same base GGUF:
the request's `model` field picks the adapter, the article's "multiple tasks on one base model".
llama-cpp-python keeps one of them loaded and reloads when a request names another (for a small
model, milliseconds). On a GPU, vLLM does the same with `vllm serve BASE --enable-lora
--lora-modules qa=DIR describe=DIR`, keeping the adapters in memory and batching requests for
different adapters together.

In front of the engine's app sits one thin check (`RequestCheck`): llama-cpp-python answers a body
that is not JSON, or a message with an unknown role, with 500 Internal Server Error, and a request
for a model it does not serve, or with no messages, with 200 from the base model. The check answers
those with 400 or 404 and a message saying what to fix, as OpenAI's API does; everything else reaches
llama.cpp's server unchanged. tests/test_serving.py reproduces each engine behaviour. A second one
(`EngineTimes`) tells a load test when llama.cpp computed each completion, so that it can show how
many ran at once rather than infer it from throughput.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_NAME = "base"
ENGINE_PATH = "/ftcourse/engine"      # where the server answers when llama.cpp computed (EngineTimes)


def server_config(base: str | Path, adapters: Mapping[str, str | Path], *, port: int,
                  n_ctx: int, threads: int | None = None) -> dict[str, Any]:
    """llama-cpp-python's --config_file: the base as model "base", then one model per adapter.
    By default llama.cpp gets every core but one, at most 4: the server's own Python (HTTP, and
    llama-cpp-python's per-token loop) needs the last one, or llama.cpp's threads wait for it."""
    threads = threads or max(1, min(4, (os.cpu_count() or 1) - 1))
    common = {"model": str(base), "n_ctx": n_ctx, "n_threads": threads, "n_threads_batch": threads,
              "seed": 0, "verbose": False, "type_k": 0, "type_v": 0}   # a float32 cache (llamacpp.load_gguf)
    if BASE_NAME in adapters:
        raise ValueError(f"An adapter may not be called {BASE_NAME!r}: that name serves the base model.")
    models = [{**common, "model_alias": BASE_NAME}]
    models += [{**common, "model_alias": name, "lora_path": str(path)} for name, path in adapters.items()]
    return {"host": "127.0.0.1", "port": port, "models": models}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A running llama.cpp server: its URL, its process, and the file its log goes to."""

    url: str
    process: subprocess.Popen
    log: Path
    models: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> int:
        """Ask the server to stop (SIGTERM), kill it if it has not within `timeout` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def wait_while_running(process: subprocess.Popen, poll: float = 0.5) -> int:
    """Wait until `process` ends and return its exit code, waking every `poll` seconds. A blocking
    wait would miss a Ctrl-C that the kernel hands to another thread of this process: Python raises
    KeyboardInterrupt only when the main thread runs again, and waitpid() would not return."""
    while process.poll() is None:
        time.sleep(poll)
    return process.returncode


def start_server(base: str | Path, adapters: Mapping[str, str | Path], *, n_ctx: int,
                 port: int | None = None, timeout: float = 60.0, workdir: str | Path | None = None) -> Server:
    """Start llama.cpp's server on 127.0.0.1 and wait (at most `timeout` s) until it answers."""
    for name, path in {BASE_NAME: base, **adapters}.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{name}: no GGUF file at {path}; write it with ftcourse export "
                                    "(--gguf) or ftcourse.llamacpp.write_gguf / write_lora_gguf.")
    port = port or free_port()
    folder = Path(workdir or tempfile.mkdtemp(prefix="ftcourse-serve-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "server.json"
    config.write_text(json.dumps(server_config(base, adapters, port=port, n_ctx=n_ctx), indent=1))
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "ftcourse.serving", str(config)],
                                   stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log, [BASE_NAME, *adapters])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"The llama.cpp server exited with code {process.returncode} before it "
                                   f"answered; its log ({log}) ends:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/v1/models", timeout=2) as reply:
                    if reply.status == 200:
                        return server
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
    except BaseException:      # Ctrl-C while waiting, or any error: leave no server running
        server.stop()
        raise
    server.stop()
    raise TimeoutError(f"The llama.cpp server did not answer within {timeout:.0f} s; see {log}.")


@contextmanager
def serving(base: str | Path, adapters: Mapping[str, str | Path], **options: Any) -> Iterator[Server]:
    """`with serving(base_gguf, {"qa": qa_gguf}, n_ctx=512) as server:` ... stopped on the way out."""
    server = start_server(base, adapters, **options)
    try:
        yield server
    finally:
        server.stop()


def post(url: str, body: Any, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """POST JSON (or raw bytes) and return (status, parsed reply), 4xx and 5xx included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"error": text.decode(errors="replace")}


def chat_completion(server: Server, model: str, messages: Sequence[Mapping[str, str]],
                    max_tokens: int = 64) -> dict[str, Any]:
    """One greedy chat completion (temperature 0) from `model`: the reply's JSON."""
    status, reply = post(f"{server.url}/v1/chat/completions",
                         {"model": model, "messages": list(messages), "max_tokens": max_tokens,
                          "temperature": 0.0, "repeat_penalty": 1.0, "seed": 0})   # greedy, unpenalised
    if status != 200:
        raise RuntimeError(f"The server answered {status}: {reply}")
    return reply


def engine_intervals(server: Server) -> tuple[int, list[tuple[float, float]]]:
    """How many completions llama.cpp has computed, and when it computed the latest of them (at most
    `EngineLog.KEPT`): (start, end) pairs on the server's `time.monotonic()` clock, in the order
    they ended."""
    with urllib.request.urlopen(f"{server.url}{ENGINE_PATH}", timeout=10) as reply:
        answer = json.loads(reply.read())
    return answer["count"], [(start, end) for start, end in answer["latest"]]


def most_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one moment (one that ends as another starts
    does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:             # at equal times, an end (-1) sorts before a start (+1)
        running += change
        most = max(most, running)
    return most


def measure_load(server: Server, requests: Sequence[tuple[str, Sequence[Mapping[str, str]]]],
                 clients: int, max_tokens: int = 64) -> dict[str, float]:
    """Send `requests` ((model, messages) pairs) from `clients` concurrent clients: the median and
    95th-percentile latency in seconds, the generated tokens per second over the whole run, the
    share of the run llama.cpp was computing, and the most completions it computed at once."""
    import numpy as np

    def one(request: tuple[str, Sequence[Mapping[str, str]]]) -> tuple[float, int]:
        start = time.perf_counter()
        reply = chat_completion(server, request[0], request[1], max_tokens)
        return time.perf_counter() - start, reply["usage"]["completion_tokens"]

    if len(requests) > EngineLog.KEPT:
        raise ValueError(f"{len(requests)} requests in one load test; the server keeps the times of the "
                         f"latest {EngineLog.KEPT}: send at most that many per measure_load call.")
    earlier, _ = engine_intervals(server)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, requests))
    wall = time.perf_counter() - start
    count, latest = engine_intervals(server)
    computed = latest[len(latest) - (count - earlier):]
    latencies = np.array([latency for latency, _ in results])
    return {"clients": clients, "requests": len(results), "p50_s": float(np.median(latencies)),
            "p95_s": float(np.percentile(latencies, 95)),
            "tokens_per_s": sum(tokens for _, tokens in results) / wall, "wall_s": wall,
            "engine_busy": sum(end - begin for begin, end in computed) / wall,
            "most_at_once": most_at_once(computed)}


CHAT_ROLES = ("system", "user", "assistant")


async def send_json(send: Any, status: int, payload: Any) -> None:
    """Answer an ASGI HTTP request with `payload` as JSON."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


class EngineLog:
    """When llama.cpp computed: the number of completions, and the (start, end) of the latest
    `KEPT` of them, so that a server that runs for days holds a bounded record."""

    KEPT = 10_000

    def __init__(self) -> None:
        self.count, self.latest = 0, deque(maxlen=self.KEPT)

    def add(self, start: float, end: float) -> None:
        self.count += 1
        self.latest.append((start, end))


def record_engine_time(log: EngineLog) -> None:
    """Make llama.cpp add (start, end) of each completion it computes in this process (the
    server's) to `log`; every chat and text completion goes through `create_completion`.
    A streamed completion is timed until its first chunk only: the load tests do not stream."""
    from llama_cpp import Llama

    compute = Llama.create_completion

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return compute(self, *args, **kwargs)
        finally:
            log.add(start, time.monotonic())

    Llama.create_completion = timed


class EngineTimes:
    """ASGI middleware: GET /ftcourse/engine answers what `record_engine_time` logged, so a load
    test can see how long, and how many at once, llama.cpp computed."""

    def __init__(self, app: Any, log: EngineLog):
        self.app, self.log = app, log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == ENGINE_PATH:
            return await send_json(send, 200, {"count": self.log.count, "latest": list(self.log.latest)})
        return await self.app(scope, receive, send)


class RequestCheck:
    """ASGI middleware: refuse a malformed completion request with 400 or 404 and a message, before
    it reaches llama.cpp's app; pass every other request through with its body unchanged."""

    def __init__(self, app: Any, models: Sequence[str]):
        self.app, self.models = app, list(models)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("completions"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if problem := self.problem(scope["path"], body):
            status, text = problem
            return await send_json(send, status, {"error": {
                "message": text, "type": "invalid_request_error",
                "code": "model_not_found" if status == 404 else None}})

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def problem(self, path: str, body: bytes) -> tuple[int, str] | None:
        """(status, message) for what is wrong with the request, or None."""
        try:
            request = json.loads(body)
        except ValueError as error:
            return 400, f"The request body is not valid JSON ({error}); send a JSON object."
        if not isinstance(request, dict):
            return 400, "The request body must be a JSON object."
        if request.get("model", BASE_NAME) not in self.models:
            return 404, (f"The model {request['model']!r} is not served here; ask for one of "
                         f"{', '.join(self.models)} (GET /v1/models lists them).")
        if path.endswith("chat/completions"):
            messages = request.get("messages")
            if not isinstance(messages, list) or not messages:
                return 400, "'messages' must be a non-empty list of {role, content} objects."
            for index, message in enumerate(messages):
                if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES \
                        or not isinstance(message.get("content"), str):
                    return 400, (f"messages[{index}] must be an object with a role ({', '.join(CHAT_ROLES)}) "
                                 f"and a string content; got {json.dumps(message)[:200]}.")
        elif not isinstance(request.get("prompt"), str):
            return 400, "'prompt' must be a string."
        return None


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m ftcourse.serving CONFIG.json`: llama-cpp-python's app for the config, behind
    `RequestCheck` and `EngineTimes`, run by uvicorn (what `python -m llama_cpp.server --config_file`
    runs, plus the check and the engine's times)."""
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ConfigFileSettings, ServerSettings

    config = ConfigFileSettings.model_validate_json(Path((argv or sys.argv[1:])[0]).read_bytes())
    computed = EngineLog()
    record_engine_time(computed)
    app = create_app(server_settings=ServerSettings.model_validate(config), model_settings=config.models)
    checked = RequestCheck(app, [model.model_alias for model in config.models])
    uvicorn.run(EngineTimes(checked, computed), host=config.host, port=config.port, log_level="warning")


__all__ = ["BASE_NAME", "EngineLog", "EngineTimes", "RequestCheck", "Server", "chat_completion",
           "engine_intervals", "measure_load", "most_at_once", "post", "record_engine_time",
           "server_config", "serving", "start_server"]


if __name__ == "__main__":
    main()
