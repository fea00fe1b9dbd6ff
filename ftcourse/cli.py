"""The `ftcourse` command: doctor, pretrain, finetune.

    ftcourse doctor                          check this machine
    ftcourse pretrain --out DIR              pretrain the tiny base model from a seed
    ftcourse finetune --method full          fine-tune the profile's base model and score it
                                             (refused if predicted not to fit in memory)
    ftcourse finetune --method lora --data F your own data: .jsonl/.json/.csv/.parquet, held-out split
    ftcourse memory --model Llama-2-7B       predict the memory of a training run, itemised
    ftcourse evaluate --task qa --out r.csv  score a model (or an adapter) with 95% intervals
    ftcourse chat --model DIR [--adapter A]  talk to a model in the terminal (Ctrl-D or Ctrl-C ends)
    ftcourse export --adapter A --out DIR    a merged Hugging Face folder, the adapter, and GGUF files
    ftcourse serve --adapter qa=A ...        one base and its adapters over HTTP (OpenAI API, llama.cpp)
    ftcourse download --profile gpu --to D   copy a GPU profile's model and datasets to D (needs network)
    ftcourse grade submissions/ --out G      run students' notebooks and every exercise check: G/grades.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ftcourse.data import TASK_FIELDS
    from ftcourse.evaluate import METRICS
    from ftcourse.memory import OPTIMIZERS, PRECISIONS
    from ftcourse.methods import METHODS, RECOMMENDED, RECOMMENDED_EPOCHS
    from ftcourse.params import REAL_MODELS
    from ftcourse.profiles import PROFILES

    parser = argparse.ArgumentParser(prog="ftcourse", description="Fine-tuning course companion.")
    commands = parser.add_subparsers(dest="command", required=True)

    doctor = commands.add_parser("doctor", help="report Python, torch, GPU, bitsandbytes, versions")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")

    pretrain = commands.add_parser("pretrain", help="pretrain the tiny base model on the world")
    pretrain.add_argument("--out", default="tiny-llama", help="output folder (default: tiny-llama)")
    pretrain.add_argument("--max-steps", type=positive_int, default=None, help="optimizer steps")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--lr", type=positive_float, default=None)
    pretrain.add_argument("--no-progress", action="store_true")

    finetune = commands.add_parser(
        "finetune", help="fine-tune the base model on a task or your data and score it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults per method (what the chapters found works; flags override them):\n" + "\n".join(
            f"  {name:<14} {method!r}, lr {lr:g}" for name, (method, lr) in RECOMMENDED.items())
        + f"\nand {RECOMMENDED_EPOCHS} epochs of batch 16 for every method.")
    finetune.add_argument("--method", required=True, choices=sorted(METHODS),
                          help="how to fine-tune")
    finetune.add_argument("--profile", choices=sorted(PROFILES), default=None,
                          help="default: $FTCOURSE_PROFILE or tiny")
    data = finetune.add_mutually_exclusive_group()
    data.add_argument("--task", default="instructions",
                      choices=[t for t, f in TASK_FIELDS.items() if "instruction" in f])
    data.add_argument("--data", default=None, metavar="FILE",
                      help="your own data (.jsonl, .json, .csv or .parquet): instruction/response rows or "
                           "chats ('messages'); 30%% of its prompts are held out for the test, with --seed")
    finetune.add_argument("--metric", default=None, choices=sorted(METRICS),
                          help="default: the task's own; rouge_l for --data")
    finetune.add_argument("--model", default=None,
                          help="base model: hub id or folder (default: the profile's)")
    add_lora_arguments(finetune)
    finetune.add_argument("--epochs", type=positive_float, default=float(RECOMMENDED_EPOCHS))
    finetune.add_argument("--lr", type=positive_float, default=None,
                          help="default: the method's (see below)")
    finetune.add_argument("--batch-size", type=positive_int, default=16)
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--limit", type=positive_int, default=None,
                          help="score at most this many test items per task")
    finetune.add_argument("--out", default=None, help="save the fine-tuned model here (in a SageMaker "
                          "training job: $SM_MODEL_DIR; the data: the one file in $SM_CHANNEL_TRAIN)")
    finetune.add_argument("--no-progress", action="store_true")
    finetune.add_argument("--ignore-memory-check", action="store_true",
                          help="start even if the memory model predicts the run will not fit (it is "
                               "refused otherwise, before any scoring or training)")

    evaluate = commands.add_parser("evaluate", help="score a model or adapter on a task's test split")
    evaluate.add_argument("--model", default=None,
                          help="base model: hub id or folder (default: the profile's)")
    evaluate.add_argument("--adapter", default=None, help="a LoRA adapter folder to load on the model")
    evaluate.add_argument("--task", default="qa",
                          choices=[t for t, f in TASK_FIELDS.items() if "response" in f])
    evaluate.add_argument("--metric", default=None, choices=sorted(METRICS),
                          help="default: the task's own (exact_match, rouge_l for describe)")
    evaluate.add_argument("--profile", choices=sorted(PROFILES), default=None)
    evaluate.add_argument("--limit", type=positive_int, default=None, help="score at most this many items")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    evaluate.add_argument("--out", default=None, help="write the table here (.json or .csv)")

    chat = commands.add_parser("chat", help="talk to a model in the terminal; Ctrl-D or Ctrl-C ends it")
    chat.add_argument("--model", default=None,
                      help="a model folder (e.g. from finetune --out) or hub id (default: the profile's)")
    chat.add_argument("--adapter", default=None, help="a LoRA adapter folder to load on the model")
    chat.add_argument("--profile", choices=sorted(PROFILES), default=None)
    chat.add_argument("--system", default=None, help="a system message to open the chat with")
    chat.add_argument("--max-new-tokens", type=positive_int, default=128, help="longest answer, in tokens")

    export = commands.add_parser("export", help="a merged Hugging Face folder, the adapter in peft's "
                                 "format, and GGUF files for llama.cpp")
    export.add_argument("--model", default=None, help="the base (or fully fine-tuned) model folder or hub id "
                        "(default: the profile's)")
    export.add_argument("--adapter", default=None,
                        help="a LoRA adapter folder (from finetune --out) to merge")
    export.add_argument("--profile", choices=sorted(PROFILES), default=None)
    export.add_argument("--out", required=True, help="folder for merged/, adapter/ and gguf/")
    export.add_argument("--gguf", default="F32,F16", help="comma-separated GGUF types of the merged model, "
                        "from F32, F16, Q8_0, Q4_0, or none (default: F32,F16)")

    serve = commands.add_parser("serve", help="serve a base model and LoRA adapters over an "
                                "OpenAI-compatible HTTP API on 127.0.0.1 (llama.cpp's server)")
    serve.add_argument("--model", default=None, help="base model folder or hub id (default: the profile's)")
    serve.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                       help="an adapter folder served as model NAME; repeat for each task")
    serve.add_argument("--profile", choices=sorted(PROFILES), default=None)
    serve.add_argument("--port", type=positive_int, default=8080)
    serve.add_argument("--workdir", default=None,
                       help="where the GGUF files go (default: a temporary folder)")

    memory = commands.add_parser("memory", help="predict the memory of training a model, itemised")
    memory.add_argument("--model", default="embedded",
                        help=f"a folder with config.json, 'embedded', or one of: {', '.join(REAL_MODELS)}")
    memory.add_argument("--method", choices=sorted(METHODS), default="full")
    add_lora_arguments(memory)
    memory.add_argument("--precision", choices=list(PRECISIONS), default="bf16-mixed")
    memory.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adamw")
    memory.add_argument("--batch-size", type=positive_int, default=1, help="sequences per device")
    memory.add_argument("--seq-len", type=positive_int, default=512, help="tokens per sequence")
    memory.add_argument("--gradient-checkpointing", action="store_true")
    memory.add_argument("--zero-stage", type=int, choices=range(4), default=0,
                        help="shard optimizer states (1), also gradients (2), also weights (3)")
    memory.add_argument("--devices", type=positive_int, default=1, help="devices to shard over")
    memory.add_argument("--json", action="store_true", help="print the terms in bytes as JSON")

    download = commands.add_parser("download", help="copy a GPU profile's model and datasets to a folder")
    download.add_argument("--profile", choices=[name for name in sorted(PROFILES) if name != "tiny"],
                          default="gpu")
    download.add_argument("--to", required=True, help="the folder: model/ and data/ go into it")

    grade = commands.add_parser("grade", help="execute submitted notebooks and run every exercise check: "
                                "grades.csv (student, chapter, exercise, passed, message) and summary.md")
    grade.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                       help="a notebook, or a folder searched for them; the file name holds the chapter "
                            "(alice-05_lora.ipynb or alice/05_lora.ipynb)")
    grade.add_argument("--out", default=".", help="folder for grades.csv and summary.md (default: here)")
    grade.add_argument("--timeout", type=positive_int, default=600, help="seconds per cell (default: 600)")
    return parser


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora-r", type=positive_int, default=None,
                        help="LoRA rank (lora, qlora; default 8)")
    parser.add_argument("--lora-alpha", type=positive_float, default=None,
                        help="LoRA alpha (lora, qlora; default 16)")
    parser.add_argument("--lora-targets", default=None,
                        help="comma-separated module names, or all-linear (the default)")


def run_doctor(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ftcourse.doctor import format_report, run_checks

    checks = run_checks()
    print(json.dumps([asdict(c) for c in checks], indent=1) if args.json else format_report(checks))
    return 0 if all(c.ok for c in checks) else 1


def run_pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ftcourse.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(seed=args.seed)
    if args.max_steps is not None:
        config = replace(config, max_steps=args.max_steps)
    if args.lr is not None:
        config = replace(config, lr=args.lr)
    command = "ftcourse " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["pretrain"] else None
    summary = pretrain(args.out, config, progress=not args.no_progress, command=command).summary
    print(f"held-out loss {summary['held_out_loss']:.4f} (at init {summary['held_out_loss_at_init']:.4f}), "
          f"fact recall {summary['fact_recall']:.1%}, {summary['wall_seconds']:.0f} s -> {args.out}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftcourse.data import load_data_file, load_task
    from ftcourse.evaluate import score_task
    from ftcourse.methods import recommended_lr
    from ftcourse.models import load_base
    from ftcourse.sft import finetune
    from ftcourse.train import TrainConfig
    from ftcourse.training_job import job_paths

    job = job_paths()                   # a SageMaker training job's data, model and output folders
    if job.data and not args.data:
        args.data = str(job.data)
    args.out = args.out or (str(job.model_dir) if job.model_dir else None)
    method = method_from_args(args)
    lr = args.lr or recommended_lr(method)
    model, tokenizer = load_base(args.model, profile=args.profile)
    if args.data:
        data = load_data_file(args.data, seed=args.seed)
        print(f"{args.data}: {sum(map(len, data.values()))} rows; held out before training, with seed "
              f"{args.seed}: {len(data['test'])} test and {len(data['validation'])} validation rows (30% "
              f"and 10% of the distinct prompts, none shared with the {len(data['train'])} training rows)")
    else:
        data = load_task(args.task, profile=args.profile)
    config = TrainConfig(epochs=args.epochs, lr=lr, batch_size=args.batch_size, seed=args.seed)
    if refuse_if_too_big(args, model, tokenizer, data["train"], method, config):
        return 2
    test_by_task: dict[str, list[dict]] = {}
    for row in data["test"]:
        test_by_task.setdefault(row.get("task", Path(args.data or "data").stem), []).append(row)
    if args.limit:
        test_by_task = {task: rows[:args.limit] for task, rows in test_by_task.items()}
    metric = args.metric or ("rouge_l" if args.data else None)
    before = {task: score_task(model, tokenizer, rows, metric=metric) for task, rows in test_by_task.items()}
    model, result = finetune(model, tokenizer, data["train"], method, config, memory_check="off",
                             progress=not args.no_progress)             # checked above
    after = {task: score_task(model, tokenizer, rows, metric=metric) for task, rows in test_by_task.items()}
    print(f"{args.method} fine-tuning on {args.data or args.task}: {len(result.history)} steps, "
          f"final loss {result.final_loss:.4f}, {result.seconds:.0f} s ({method!r}, lr {lr:g})")
    print(f"{'task':<12} {'metric':<12} {'n':>4}  {'before':>22}  {'after':>22}")
    for task in test_by_task:
        print(f"{task:<12} {after[task].metric:<12} {len(after[task].scores):>4}  "
              f"{before[task].ci!s:>22}  {after[task].ci!s:>22}")
    record = {"method": args.method, "config": repr(method), "lr": lr, "epochs": args.epochs,
              "seed": args.seed, "data": args.data or f"ftcourse task {args.task}",
              "base_model": args.model or model.name_or_path,
              "scores": {task: {"metric": after[task].metric, "n": len(after[task].scores),
                                "before": str(before[task].ci), "after": str(after[task].ci)}
                         for task in test_by_task}}
    if args.out:
        from ftcourse.methods import save_trained

        saved = save_trained(model, method, args.out, tokenizer)
        (saved / RUN_RECORD).write_text(json.dumps(record, indent=1))
        print(f"saved to {saved}")
    if job.output_dir:
        job.output_dir.mkdir(parents=True, exist_ok=True)
        (job.output_dir / "metrics.json").write_text(json.dumps(record, indent=1))
    return 0


RUN_RECORD = "ftcourse_run.json"     # what finetune --out trained, on what, and how it scored


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftcourse.export import bedrock_problems, merged_copy, model_card, write_folder
    from ftcourse.llamacpp import FILE_TYPES, write_gguf, write_lora_gguf
    from ftcourse.models import load_base, model_label

    types = [] if args.gguf.lower() == "none" else [kind.strip().upper() for kind in args.gguf.split(",")]
    if unknown := [kind for kind in types if kind not in FILE_TYPES]:
        raise ValueError(f"Unknown GGUF type(s) {unknown}; use {', '.join(FILE_TYPES)} or none.")
    model, tokenizer = load_base(args.model, profile=args.profile)
    out, trained = Path(args.out), args.adapter or args.model          # finetune --out wrote either
    record_file = Path(trained) / RUN_RECORD if trained else None
    record = json.loads(record_file.read_text()) if record_file and record_file.is_file() else {}
    if args.adapter:
        from ftcourse.lora import load_adapter, read_adapter_config, save_adapter

        model = load_adapter(model, args.adapter)
        adapter = save_adapter(model, out / "adapter", read_adapter_config(args.adapter))
        print(f"adapter (peft format) -> {adapter}")
    scores = {f"{task} ({s['metric']}, n={s['n']})": f"{s['after']} (base: {s['before']})"
              for task, s in record.get("scores", {}).items()} or {"not recorded": "run ftcourse evaluate"}
    card = model_card(base_model=args.model or model_label(model), scores=scores,
                      method=record.get("method", "lora" if args.adapter else "full"),
                      config=record.get("config", "not recorded"),
                      data=record.get("data", "not recorded (export of a model without ftcourse_run.json)"))
    plain = merged_copy(model)                     # merged once, for the folder and the GGUF files
    folder = write_folder(plain, tokenizer, out / "merged", card=card)
    print(f"merged Hugging Face folder -> {folder}")
    for problem in bedrock_problems(folder):
        print(f"  note: Bedrock Custom Model Import would refuse it: {problem}", file=sys.stderr)
    if types:
        for kind in types:
            path = write_gguf(plain, tokenizer, out / "gguf" / f"model-{kind}.gguf", kind)
            print(f"GGUF {kind} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
        if args.adapter:
            print(f"GGUF adapter -> {write_lora_gguf(model, out / 'gguf' / 'adapter.gguf')}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import copy
    import tempfile
    from pathlib import Path

    from ftcourse.batching import max_positions
    from ftcourse.llamacpp import write_gguf, write_lora_gguf
    from ftcourse.lora import load_adapter
    from ftcourse.models import load_base
    from ftcourse.serving import start_server, wait_while_running

    adapters = {}
    for given in args.adapter:
        name, sep, folder = given.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--adapter {given!r}: write NAME=FOLDER, e.g. --adapter qa=runs/qa.")
        adapters[name] = folder
    model, tokenizer = load_base(args.model, profile=args.profile)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ftcourse-serve-"))
    base = write_gguf(model, tokenizer, workdir / "base-F32.gguf")
    files = {name: write_lora_gguf(load_adapter(copy.deepcopy(model), folder), workdir / f"{name}.gguf")
             for name, folder in adapters.items()}         # each on a fresh copy: targets may differ
    server = start_server(base, files, n_ctx=max_positions(model) or 2048, port=args.port, workdir=workdir)
    print(f"Serving {', '.join(server.models)} at {server.url}/v1 (OpenAI API; the request's \"model\" picks "
          f"the adapter). Try:\n  curl {server.url}/v1/chat/completions -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{next(iter(adapters), 'base')}\", \"messages\": [{{\"role\": \"user\", "
          f"\"content\": \"Hello\"}}]}}'\nCtrl-C stops it.", flush=True)
    try:
        wait_while_running(server.process)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


# The flags of `ftcourse finetune` that change a term of the memory model, for its suggestions.
FINETUNE_FLAGS = {"method": "--method", "batch_size": "--batch-size", "lora_r": "--lora-r"}


def refuse_if_too_big(args: argparse.Namespace, model, tokenizer, rows: Sequence[dict], method,
                      config) -> bool:
    """Whether to refuse the run: the memory pre-flight (`memory.plan_run`) predicts it will not fit
    on the device it will train on. Checked before any scoring or training, so a refusal costs
    nothing; it says so on stderr, with the breakdown and what would fit. --ignore-memory-check
    turns the refusal into a warning."""
    from ftcourse.batching import default_device, max_positions
    from ftcourse.memory import WontFit, plan_run
    from ftcourse.params import config_value
    from ftcourse.sft import tokenize_instructions

    if config_value(model.config, "intermediate_size") is None:
        print("ftcourse finetune: note: no memory check, the memory model counts Llama-family models only",
              file=sys.stderr)
        return False
    limit = max_positions(model)
    examples = [example for example in tokenize_instructions(tokenizer, rows)   # finetune leaves out
                if limit is None or len(example["input_ids"]) <= limit]          # the longer ones
    try:
        plan_run(model, examples, config, method=method, refuse=True, flags=FINETUNE_FLAGS)
    except WontFit as err:
        setup = err.estimate.setup
        plan = (f"{args.method} fine-tuning, {setup.precision}, batch {setup.batch_size} x {setup.seq_len} "
                f"tokens (the longest tokenised training example), on {default_device()}")
        if args.ignore_memory_check:
            print(f"ftcourse finetune: warning: starting {plan} despite the memory check "
                  f"(--ignore-memory-check).\n{err}", file=sys.stderr)
            return False
        print(f"ftcourse finetune: refused to start {plan}.\n{err}\n"
              "To start it anyway, pass --ignore-memory-check.", file=sys.stderr)
        return True
    return False


def run_evaluate(args: argparse.Namespace) -> int:
    from ftcourse.data import load_task
    from ftcourse.evaluate import save_table, score_task, tidy
    from ftcourse.models import load_base

    model, tokenizer = load_base(args.model, profile=args.profile)
    name = args.model or "base"
    if args.adapter:
        from ftcourse.lora import load_adapter

        model, name = load_adapter(model, args.adapter), f"{name} + {args.adapter}"
    rows = list(load_task(args.task, profile=args.profile)["test"])[:args.limit]
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row.get("task", args.task), []).append(row)
    scores = {(name, task): score_task(model, tokenizer, items, metric=args.metric, seed=args.seed)
              for task, items in by_task.items()}
    table = tidy(scores)
    print(f"{'task':<12} {'metric':<12} {'n':>4}  estimate [95% interval]")
    for row in table:
        print(f"{row['task']:<12} {row['metric']:<12} {row['n']:>4}  {row['estimate']:.3f} "
              f"[{row['low']:.3f}, {row['high']:.3f}]")
    if args.out:
        print(f"saved to {save_table(table, args.out)}")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from ftcourse.models import load_base, model_label
    from ftcourse.terminal import converse

    model, tokenizer = load_base(args.model, profile=args.profile)
    name = args.model or model_label(model)
    if args.adapter:
        from ftcourse.lora import load_adapter

        model, name = load_adapter(model, args.adapter), f"{name} + {args.adapter}"
    model.eval()

    def write(text: str) -> None:
        print(text, end="", flush=True)

    answered = 0
    try:
        print(f"Chatting with {name}. Ctrl-D or Ctrl-C ends the chat.", file=sys.stderr, flush=True)
        answered = converse(model, tokenizer, lambda: input("you> "), write, system=args.system,
                            max_new_tokens=args.max_new_tokens)
    except KeyboardInterrupt:      # Ctrl-C between the greeting and the first prompt
        print()
    print(f"{answered} answer(s); bye.", file=sys.stderr)
    return 0


def run_memory(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftcourse.memory import Setup, estimate, suggestions
    from ftcourse.models import resolve_model_path
    from ftcourse.params import REAL_MODELS, count_parameters

    if args.model in REAL_MODELS:
        config = REAL_MODELS[args.model]
    else:
        folder = Path(resolve_model_path(args.model))
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{args.model!r} is neither a local model folder nor a known config "
                                    f"({', '.join(REAL_MODELS)}); download the model's config.json first.")
        config = json.loads((folder / "config.json").read_text())
    setup = Setup(method=method_from_args(args), precision=args.precision, optimizer=args.optimizer,
                  batch_size=args.batch_size, seq_len=args.seq_len,
                  gradient_checkpointing=args.gradient_checkpointing, zero_stage=args.zero_stage,
                  num_devices=args.devices)
    result = estimate(config, setup)
    if args.json:
        print(json.dumps({**result.as_dict(), "trainable": result.footprint.trainable}))
        return 0
    total = count_parameters(config).total
    print(f"{args.model}, {args.method}: {result.footprint.trainable:,} of {total:,} parameters train "
          f"({result.footprint.trainable / total:.3%}); {args.precision}, {args.optimizer}, batch "
          f"{args.batch_size} x {args.seq_len} tokens" + (f", ZeRO-{args.zero_stage} over {args.devices}"
                                                          if args.zero_stage else ""))
    print(result)
    if tips := suggestions(result, MEMORY_FLAGS):
        print("What would shrink it most:\n" + "\n".join(f"  - {tip}" for tip in tips))
    return 0


# The flags of `ftcourse memory` that change a term of the memory model, for its suggestions.
MEMORY_FLAGS = {"method": "--method", "batch_size": "--batch-size", "seq_len": "--seq-len",
                "gradient_checkpointing": "--gradient-checkpointing", "optimizer": "--optimizer",
                "lora_r": "--lora-r"}


def method_from_args(args: argparse.Namespace):
    """The method config the command line asks for: the method's recommended one
    (`methods.RECOMMENDED`), with any LoRA flag given replacing its value."""
    from dataclasses import replace

    from ftcourse.methods import RECOMMENDED

    method = RECOMMENDED[args.method][0]
    if args.method not in ("lora", "qlora"):
        return method
    targets = args.lora_targets or method.targets
    if targets != "all-linear" and isinstance(targets, str):
        targets = tuple(name.strip() for name in targets.split(","))
    return replace(method, r=args.lora_r or method.r, alpha=args.lora_alpha or method.alpha, targets=targets)


def run_download(args: argparse.Namespace) -> int:
    """Copy the profile's model (safetensors and tokenizer files) and its hub datasets into --to,
    then say which variables make the profile read them there."""
    from pathlib import Path

    from huggingface_hub import snapshot_download

    from ftcourse.data.hub import download_tasks
    from ftcourse.profiles import PROFILES

    out = Path(args.to).expanduser()
    profile = PROFILES[args.profile]
    snapshot_download(profile.base_model, local_dir=out / "model",
                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    files = download_tasks(out / "data")
    print(f"{profile.base_model} -> {out / 'model'}; {len(files)} datasets -> {out / 'data'}\n"
          f"Use them with:\n  export FTCOURSE_PROFILE={profile.name} FTCOURSE_MODEL={out / 'model'} "
          f"FTCOURSE_DATA_DIR={out / 'data'} HF_HUB_OFFLINE=1")
    return 0


def run_grade(args: argparse.Namespace) -> int:
    """Grade every submitted notebook (it runs the students' code: use a throwaway environment),
    write grades.csv and summary.md, and print the summary."""
    from ftcourse.exercises.grading import grade

    report = grade(args.submissions, timeout=args.timeout)
    csv_path, summary_path = report.write(args.out)
    print(report.summary() + f"\nwritten: {csv_path}, {summary_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {"doctor": run_doctor, "pretrain": run_pretrain, "finetune": run_finetune, "chat": run_chat,
           "memory": run_memory, "evaluate": run_evaluate, "download": run_download, "export": run_export,
           "serve": run_serve, "grade": run_grade}[args.command]
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"ftcourse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
