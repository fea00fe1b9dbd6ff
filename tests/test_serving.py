"""Serving one base and two LoRA adapters through llama.cpp's server: each answer is the adapter's
own greedy generation in process, malformed requests get a 4xx with a message, and the server stops
within a bounded wait. The engine's own answers to malformed requests are reproduced below."""

import copy
import json
import time

import pytest
import torch

from ftcourse.generate import generate
from ftcourse.llamacpp import write_gguf, write_lora_gguf
from ftcourse.lora import LoRA, apply_lora, lora_layers
from ftcourse.serving import (
    Server,
    chat_completion,
    engine_intervals,
    free_port,
    measure_load,
    most_at_once,
    post,
    server_config,
    serving,
    start_server,
)

PROMPTS = ["What is the home town of Ana Bel?", "Describe Bello Torbeln.", "What is 12 plus 30?"]
MAX_TOKENS = 32
ADAPTER = LoRA(r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "up_proj"))


def random_adapter(base, seed: int):
    """An adapter with A and B drawn from `seed` (B not zero), so it changes the base's answers."""
    torch.manual_seed(seed)                                     # lora_A's initialisation
    model = apply_lora(copy.deepcopy(base), ADAPTER)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def served(base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    model, tokenizer = base
    adapters = {"qa": random_adapter(model, 1), "describe": random_adapter(model, 2)}
    files = {name: write_lora_gguf(adapter, folder / f"{name}.gguf") for name, adapter in adapters.items()}
    base_file = write_gguf(model, tokenizer, folder / "base.gguf")
    with serving(base_file, files, n_ctx=512, workdir=folder) as server:
        yield server, {"base": model, **adapters}, tokenizer
    assert server.process.returncode is not None


def test_each_adapter_answers_as_it_does_in_process(served):
    server, models, tokenizer = served
    answers = {}
    for name, model in models.items():
        for prompt in PROMPTS:
            reply = chat_completion(server, name, [{"role": "user", "content": prompt}], MAX_TOKENS)
            ours = generate(model, tokenizer, [prompt], max_new_tokens=MAX_TOKENS)[0]
            assert reply["model"] == name
            assert reply["choices"][0]["message"]["content"].strip() == ours, (name, prompt)
            answers[name, prompt] = ours
    for prompt in PROMPTS:       # the request's model picked the adapter: the three answer differently
        assert len({answers[name, prompt] for name in models}) == 3, prompt


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not valid JSON"),
    ({"model": "qa"}, 400, "'messages' must be a non-empty list"),
    ({"model": "qa", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages[0] must be an object"),
    ({"model": "translate", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "'translate' is not served"),
    ({"model": "qa", "messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 4}, 400,
     "maximum context length is 512"),
])
def test_malformed_requests_get_a_4xx_with_a_message(served, body, status, says):
    server = served[0]
    code, reply = post(f"{server.url}/v1/chat/completions", body)
    assert code == status and says in reply["error"]["message"]
    assert chat_completion(server, "qa", [{"role": "user", "content": "hi"}], 2)["choices"]   # still serving


def test_the_server_lists_its_models_and_stops_within_a_bounded_wait(base, tmp_path):
    import urllib.request

    model, tokenizer = base
    base_file = write_gguf(model, tokenizer, tmp_path / "base.gguf")
    server = start_server(base_file, {}, n_ctx=512, workdir=tmp_path)
    with urllib.request.urlopen(f"{server.url}/v1/models", timeout=5) as reply:
        assert [entry["id"] for entry in json.loads(reply.read())["data"]] == ["base"]
    start = time.monotonic()
    assert server.stop(timeout=10) is not None and time.monotonic() - start < 25
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/v1/models", timeout=2)


def test_ctrl_c_while_the_server_starts_leaves_no_server_running(base, tmp_path, monkeypatch):
    import subprocess

    import ftcourse.serving

    model, tokenizer = base
    base_file = write_gguf(model, tokenizer, tmp_path / "base.gguf")
    started, real_popen = [], subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ftcourse.serving.subprocess, "Popen", popen)
    monkeypatch.setattr(ftcourse.serving.urllib.request, "urlopen", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        start_server(base_file, {}, n_ctx=512, workdir=tmp_path)
    assert len(started) == 1 and started[0].poll() is not None     # stopped, not orphaned


def test_serve_command_answers_for_an_adapter_until_ctrl_c(base, tmp_path, ctrl_c_as_in_a_terminal):
    import select
    import signal
    import subprocess
    import sys
    import urllib.request

    from ftcourse.lora import save_adapter

    model, tokenizer = base
    adapter = random_adapter(model, 3)
    save_adapter(adapter, tmp_path / "qa", ADAPTER)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ftcourse.cli", "serve", "--adapter",
                                f"qa={tmp_path / 'qa'}", "--port", str(port),
                                "--workdir", str(tmp_path / "work")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               **ctrl_c_as_in_a_terminal)
    server = Server(f"http://127.0.0.1:{port}", process, tmp_path / "work" / "server.log")
    printed = []
    try:
        # Until the command says it serves (after loading, exporting and starting the server, whose
        # own wait is 60 s), stops printing, or 3 min pass. Ctrl-C before that would stop the start.
        deadline = time.monotonic() + 180
        while not any(line.startswith("Serving") for line in printed) and \
                select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if not (line := process.stdout.readline()):
                break
            printed.append(line)
        reply = chat_completion(server, "qa", [{"role": "user", "content": PROMPTS[0]}], MAX_TOKENS)
        assert reply["choices"][0]["message"]["content"].strip() == \
            generate(adapter, tokenizer, [PROMPTS[0]], max_new_tokens=MAX_TOKENS)[0]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:              # killed, and said so below
            process.kill()
            out, err = process.communicate()
    log = server.log.read_text()[-2000:] if server.log.is_file() else "(no server log)"
    assert process.returncode == 0, (f"exit code {process.returncode} (-9: still running 30 s after Ctrl-C). "
                                     f"Printed:\n{''.join(printed)}{out}\nstderr:\n{err[-2000:]}\n"
                                     f"server log:\n{log}")
    assert f"Serving base, qa at http://127.0.0.1:{port}/v1" in "".join(printed) + out
    with pytest.raises(OSError):                   # and the llama.cpp server stopped with it
        urllib.request.urlopen(f"{server.url}/v1/models", timeout=2)


def test_bad_server_setups_are_clear_errors(tmp_path):
    (tmp_path / "base.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="qa: no GGUF file"):
        start_server(tmp_path / "base.gguf", {"qa": tmp_path / "qa.gguf"}, n_ctx=512)
    with pytest.raises(ValueError, match="may not be called 'base'"):
        server_config("b.gguf", {"base": "a.gguf"}, port=1, n_ctx=512)


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (3, 2), (16, 4)])
def test_the_server_leaves_a_core_to_its_own_python(monkeypatch, cores, threads):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    config = server_config("b.gguf", {"qa": "a.gguf"}, port=1, n_ctx=512)
    used = {(model["n_threads"], model["n_threads_batch"]) for model in config["models"]}
    assert used == {(threads, threads)}
    assert server_config("b.gguf", {}, port=1, n_ctx=512, threads=3)["models"][0]["n_threads"] == 3


# llama-cpp-python 0.3.36's own server, without RequestCheck: answers that should be a 4xx. Strict
# xfails: the day one is fixed it passes, the test fails, and the check in front can go.
@pytest.mark.parametrize("body", [
    pytest.param(b"{not json",
                 marks=pytest.mark.xfail(strict=True, reason="answers 500 Internal Server Error")),
    pytest.param({"model": "qa", "messages": [{"role": "wizard", "content": "hi"}]},
                 marks=pytest.mark.xfail(strict=True, reason="answers 500 with the validation errors")),
    pytest.param({"model": "translate", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                 marks=pytest.mark.xfail(strict=True, reason="answers 200 from the first model")),
    pytest.param({"model": "qa", "max_tokens": 2},
                 marks=pytest.mark.xfail(strict=True, reason="answers 200 with no messages at all")),
])
def test_llama_cpp_server_alone_answers_malformed_requests_with_a_4xx(base, tmp_path, body):
    import subprocess
    import sys
    import urllib.request

    model, tokenizer = base
    config = server_config(write_gguf(model, tokenizer, tmp_path / "base.gguf"), {}, port=free_port(),
                           n_ctx=512)
    config["models"][0]["model_alias"] = "qa"
    (tmp_path / "server.json").write_text(json.dumps(config))
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file",
                                str(tmp_path / "server.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{config['port']}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        code, _ = post(f"{url}/v1/chat/completions", body)
    finally:
        process.terminate()
        process.wait(10)
    assert 400 <= code < 500


# Run in a process of its own: a Ctrl-C that the kernel hands to a thread other than the main one
# (here sent to one on purpose) sets Python's flag, but a blocking waitpid() in the main thread
# would not return to see it, and `ftcourse serve` would go on serving after Ctrl-C.
CTRL_C_ON_ANOTHER_THREAD = """
import signal, subprocess, sys, threading, time
from ftcourse.serving import wait_while_running
server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
idle = threading.Thread(target=time.sleep, args=(120,), daemon=True)   # as a pool's idle thread
idle.start()
threading.Timer(1.0, signal.pthread_kill, (idle.ident, signal.SIGINT)).start()
try:
    wait_while_running(server)
except KeyboardInterrupt:
    print("stopped by Ctrl-C")
finally:
    server.kill()
"""


def test_waiting_on_the_server_sees_a_ctrl_c_delivered_to_another_thread(ctrl_c_as_in_a_terminal):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CTRL_C_ON_ANOTHER_THREAD], capture_output=True, text=True,
                          timeout=60, **ctrl_c_as_in_a_terminal)
    assert done.stdout.strip() == "stopped by Ctrl-C", done.stderr[-2000:]


@pytest.mark.parametrize("intervals, expected", [
    ([], 0), ([(0, 1)], 1), ([(0, 1), (1, 2)], 1), ([(0, 2), (1, 3)], 2),
    ([(0, 10), (1, 2), (3, 4), (1.5, 3.5)], 3),
])
def test_most_at_once_counts_overlapping_intervals(intervals, expected):
    assert most_at_once(intervals) == expected


def test_the_engine_computes_one_completion_at_a_time_however_many_clients(served):
    server, _, _ = served
    requests = [(name, [{"role": "user", "content": prompt}])
                for name in ("qa", "describe") for prompt in PROMPTS]
    before, _ = engine_intervals(server)
    load = measure_load(server, requests, clients=4, max_tokens=8)
    count, latest = engine_intervals(server)
    computed = latest[len(latest) - (count - before):]
    assert load["requests"] == len(computed) == len(requests)       # every completion timed, once
    assert all(start <= end for start, end in computed)
    assert load["most_at_once"] == 1 and 0 < load["engine_busy"] <= 1


def test_a_load_test_longer_than_the_engine_log_is_refused(served):
    from ftcourse.serving import EngineLog

    request = ("qa", [{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="keeps the times of the latest 10000: send at most that many"):
        measure_load(served[0], [request] * (EngineLog.KEPT + 1), clients=1)
