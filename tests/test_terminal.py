import os
import signal
import subprocess
import sys

from ftcourse.chat import messages, prompt_ids
from ftcourse.generate import generate
from ftcourse.terminal import converse, fit_chat

QUESTIONS = ["Where does Quadra Kapels live?", "", "And what is the job of Quadra Kapels?"]


def reader(lines, end=EOFError):
    lines = iter(lines)

    def read():
        try:
            return next(lines)
        except StopIteration:
            raise end from None
    return read


def test_each_answer_is_streamed_in_pieces_and_equals_greedy_generation_of_the_conversation(base):
    model, tokenizer = base
    pieces = []
    assert converse(model, tokenizer, reader(QUESTIONS), pieces.append, max_new_tokens=12) == 2
    first = generate(model, tokenizer, [QUESTIONS[0]], max_new_tokens=12)[0]
    conversation = messages(QUESTIONS[0], first) + [{"role": "user", "content": QUESTIONS[2]}]
    second = generate(model, tokenizer, [conversation], max_new_tokens=12)[0]
    answers = "".join(pieces).split("model> ")[1:]
    assert [answer.strip() for answer in answers] == [first, second]
    assert len(pieces) > 6, "the answers came in one piece each, not as they were generated"


def test_ctrl_c_ends_the_chat_cleanly_while_waiting_or_while_answering(base):
    model, tokenizer = base
    assert converse(model, tokenizer, reader(QUESTIONS[:1], KeyboardInterrupt), lambda text: None,
                    max_new_tokens=4) == 1

    written = []

    def interrupt_mid_answer(text):
        written.append(text)
        if len(written) == 2:             # the first piece of the answer, after "model> "
            raise KeyboardInterrupt
    assert converse(model, tokenizer, reader(QUESTIONS[:1]), interrupt_mid_answer, max_new_tokens=8) == 0


def test_the_oldest_turns_go_when_the_conversation_outgrows_the_model(base):
    _, tokenizer = base
    chat = [{"role": "system", "content": "Be brief."}]
    for turn in range(6):
        chat += messages(f"Question number {turn} about the world?", f"Answer {turn}.")
    budget = len(prompt_ids(tokenizer, chat)) // 2
    dropped = fit_chat(tokenizer, chat, budget)
    assert dropped % 2 == 0 and dropped > 0 and chat[0]["role"] == "system" and chat[1]["role"] == "user"
    assert chat[-1]["content"] == "Answer 5."


def run_chat(stdin: str = "", ctrl_c: dict | None = None) -> subprocess.CompletedProcess:
    """`ftcourse chat` given `stdin`; or, with `ctrl_c` (Popen keywords for a terminal's Ctrl-C), sent
    Ctrl-C while it waits for a line, its input left open so that nothing else can end it."""
    command = [sys.executable, "-m", "ftcourse.cli", "chat", "--max-new-tokens", "8"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}, **(ctrl_c or {}))
    if ctrl_c is not None:
        for _ in range(50):                  # progress bars first; then the model waits for a line
            if "Ctrl-D or Ctrl-C ends" in process.stderr.readline():
                break
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)             # before communicate() closes the input: no end of file
        out, err = process.communicate()
    else:
        out, err = process.communicate(stdin, timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_ftcourse_chat_answers_piped_lines_and_ends_at_the_end_of_input(base):
    model, tokenizer = base
    done = run_chat(QUESTIONS[0] + "\n")
    expected = generate(model, tokenizer, [QUESTIONS[0]], max_new_tokens=8)[0]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("you> model> ") and expected in done.stdout
    assert "1 answer(s); bye." in done.stderr and "Traceback" not in done.stderr


def test_ftcourse_chat_ends_cleanly_on_ctrl_c(ctrl_c_as_in_a_terminal):
    done = run_chat(ctrl_c=ctrl_c_as_in_a_terminal)
    assert done.returncode == 0, done.stderr
    assert "0 answer(s); bye." in done.stderr and "Traceback" not in done.stderr


def test_ftcourse_chat_talks_to_a_base_model_with_an_adapter(base, tmp_path, monkeypatch, capsys):
    import copy

    import torch

    from ftcourse.cli import main
    from ftcourse.lora import LoRA, apply_lora, lora_layers, save_adapter

    config = LoRA(r=4, targets="all-linear")
    adapted = apply_lora(copy.deepcopy(base[0]), config)
    torch.manual_seed(0)
    for layer in lora_layers(adapted).values():              # a trained-looking adapter: B != 0
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    save_adapter(adapted, tmp_path / "adapter", config)
    read = reader(QUESTIONS[:1])
    monkeypatch.setattr("builtins.input", lambda prompt="": read())
    assert main(["chat", "--adapter", str(tmp_path / "adapter"), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    with_adapter = generate(adapted, base[1], [QUESTIONS[0]], max_new_tokens=8)[0]
    assert with_adapter != generate(base[0], base[1], [QUESTIONS[0]], max_new_tokens=8)[0]
    assert with_adapter in out
