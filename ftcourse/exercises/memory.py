"""Exercises on the memory of training: bytes per parameter, and what ZeRO shards; predicting
the memory saving of LoRA at a long batch; an open experiment on sequence length and checkpointing.

The oracle is `ftcourse.memory.model_state_bytes`, the accounting that reproduces the ZeRO
paper's figure 1 in chapter 4 (weights, gradients and optimizer states; activations aside).
"""

from __future__ import annotations

from collections.abc import Callable

from ftcourse.exercises.core import exercise, expect_number
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict
from ftcourse.memory import OPTIMIZERS, PRECISIONS, Setup, model_state_bytes


def training_bytes_per_parameter(precision: str, optimizer: str) -> float:
    """Bytes one trainable parameter costs in training: its weight, gradient and optimizer states.

    Mixed precision ("bf16-mixed") computes with bf16 weights and gradients but keeps an fp32
    master copy and fp32 states, so that small updates are not rounded away.
    """
    weight_and_gradient = {"fp32": 4 + 4, "bf16-mixed": 2 + 2, "bf16": 2 + 2}[precision]
    master_copy = 4 if precision == "bf16-mixed" else 0
    bytes_per_state = 2 if precision == "bf16" else 4
    states = {"adamw": 2, "sgd-momentum": 1, "sgd": 0}[optimizer]   # Adam's two moments; momentum
    return weight_and_gradient + master_copy + states * bytes_per_state


@exercise(chapter="04_full_vs_peft", solution=training_bytes_per_parameter,
          task="Return the bytes of weight + gradient + optimizer states per trainable parameter for "
               "precision 'fp32', 'bf16-mixed' (fp32 master copy and states) or 'bf16', and "
               "optimizer 'adamw' (2 states), 'sgd-momentum' (1) or 'sgd' (0).")
def check_training_bytes_per_parameter(answer: Callable[[str, str], float]) -> None:
    """Compare with `model_state_bytes` for every precision and optimizer."""
    for precision in PRECISIONS:
        for optimizer in ("adamw", "sgd-momentum", "sgd"):
            setup = Setup(precision=precision, optimizer=optimizer)
            want = sum(model_state_bytes(1, 0, setup).values())
            got = answer(precision, optimizer)
            expect_number(got, want, f"training_bytes_per_parameter({precision!r}, {optimizer!r})",
                          hints=_bytes_per_parameter_mistakes(want, setup))


def _bytes_per_parameter_mistakes(want: float, setup: Setup) -> dict[str, float]:
    """The common mistakes of `training_bytes_per_parameter` and the numbers they give; mistakes
    that give the same number share one message, which names each of them."""
    p, states = PRECISIONS[setup.precision], OPTIMIZERS[setup.optimizer][0]
    count_states = ("count the optimizer's states per parameter: AdamW keeps 2 (two moments), SGD "
                    "with momentum 1, plain SGD none.")
    other_state_size = 2 if p.state == 4 else 4
    mistakes = [
        ("mixed precision also keeps an fp32 master copy of each weight (4 bytes): the optimizer "
         "updates it, and the bf16 weight is a rounded copy of it.", want - p.master if p.master else None),
        ("only mixed precision keeps a master copy: in pure fp32 or bf16 the optimizer updates the "
         "weight itself.", None if p.master else want + 4),
        (f"each optimizer state takes {p.state} bytes in {setup.precision}: fp32 in mixed precision, "
         "bf16 in pure bf16.", want + states * (other_state_size - p.state) if states else None),
        (count_states + " You counted one too few.", want - p.state if states else None),
        (count_states + " You counted one too many.", want + p.state),
        ("you forgot the gradient: one per trainable parameter, in the weight's precision.",
         want - p.gradient)]
    by_number: dict[float, list[str]] = {}
    for message, number in mistakes:
        if number is not None:
            by_number.setdefault(number, []).append(message)
    return {" Or: ".join(messages): number for number, messages in by_number.items()}


def zero_model_state_bytes(num_parameters: float, zero_stage: int, num_devices: int) -> float:
    """Bytes per device of the weights, gradients and optimizer states of mixed-precision AdamW
    training under ZeRO: stage 1 shards the optimizer states, 2 also the gradients, 3 also the weights.

    Each device then keeps only its 1/num_devices share of what is sharded, and all of the rest.
    """
    weights = 2 * num_parameters       # bf16
    gradients = 2 * num_parameters     # bf16
    optimizer = 12 * num_parameters    # fp32 master copy and two fp32 Adam moments
    if zero_stage >= 1:
        optimizer = optimizer / num_devices
    if zero_stage >= 2:
        gradients = gradients / num_devices
    if zero_stage >= 3:
        weights = weights / num_devices
    return weights + gradients + optimizer


@exercise(chapter="04_full_vs_peft", solution=zero_model_state_bytes,
          task="Return the bytes per device of weights (bf16), gradients (bf16) and optimizer states "
               "(12 bytes: fp32 master copy and two moments) when ZeRO stage 0-3 shards them over "
               "num_devices: stage 1 the optimizer states, 2 also the gradients, 3 also the weights.")
def check_zero_model_state_bytes(answer: Callable[[float, int, int], float]) -> None:
    """Compare with `model_state_bytes` on the ZeRO paper's example and on Llama-2-7B."""
    # The ZeRO paper's figure 1 (7.5B parameters, 64 devices), then Llama-2-7B on 8 GPUs.
    for num_parameters, num_devices in [(7.5e9, 64), (6_738_415_616, 8)]:
        for stage in range(4):
            setup = Setup(precision="bf16-mixed", zero_stage=stage, num_devices=num_devices)
            want = sum(model_state_bytes(num_parameters, 0, setup).values())
            got = answer(num_parameters, stage, num_devices)
            expect_number(got, want, f"zero_model_state_bytes({num_parameters:g}, {stage}, {num_devices})",
                          hints=_zero_mistakes(num_parameters, stage, num_devices))


def _zero_mistakes(num_parameters: float, stage: int, num_devices: int) -> dict[str, float]:
    """The common mistakes of `zero_model_state_bytes` and the numbers they give."""
    def sharded(weights: bool, gradients: bool, optimizer: bool, optimizer_bytes: int = 12) -> float:
        share = lambda is_sharded: 1 / num_devices if is_sharded else 1
        return num_parameters * (2 * share(weights) + 2 * share(gradients)
                                 + optimizer_bytes * share(optimizer))

    return {
        "the stages are cumulative: stage 2 shards the optimizer states and the gradients, stage 3 "
        "all three.": sharded(stage == 3, stage == 2, stage == 1),
        "the stages shard in the other order: stage 1 the optimizer states (the biggest), then the "
        "gradients, then the weights.": sharded(stage >= 1, stage >= 2, stage >= 3),
        "each stage adds one kind of state: stage 1 shards only the optimizer states, stage 2 also "
        "the gradients, stage 3 also the weights.": sharded(stage >= 1, stage >= 1, stage >= 1),
        "mixed-precision AdamW keeps 12 bytes of optimizer state per parameter: an fp32 master copy "
        "(4) and two fp32 moments (8).": sharded(stage >= 3, stage >= 2, stage >= 1, optimizer_bytes=8)}


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("long_batch_memory_ratio", chapter="04_full_vs_peft",
        question="At one sequence of 512 tokens, full fine-tuning of Llama-2-7B needs about 7 times the peak"
                 " memory of LoRA r=8 on q and v (mixed precision, no gradient checkpointing). At a batch of"
                 " 8 sequences of 2,048 tokens, how many times LoRA's peak does full fine-tuning need?",
        form=Number(rel=0.25, low=0, unit="times"))


def _checkpointing_keeps_less(finding: dict) -> str | None:
    # Checkpointing keeps each layer's input instead of its activations; recomputing one layer costs a
    # little at short lengths, never 5% of the peak.
    lengths, plain, checkpointed = finding["seq_lens"], finding["peak_gb"], finding["peak_gb_checkpointed"]
    if not len(lengths) == len(plain) == len(checkpointed):
        return None                                  # one_value_per says what is wrong
    above = [length for length, low, high in zip(lengths, checkpointed, plain) if low > 1.05 * high]
    return (f"at seq_lens {above} the checkpointed peak is above the plain one, but checkpointing keeps "
            "fewer activations: are the two lists swapped?") if above else None


experiment("checkpointing_memory", chapter="04_full_vs_peft",
           question="How does the peak memory of LoRA r=8 on Llama-2-7B grow with the sequence length, with "
                    "and without gradient checkpointing? Estimate it with the memory model at three lengths "
                    "or more (batch 1, mixed precision), find the longest sequence each way that fits a "
                    "24 GB GPU, and say which term grows and what checkpointing trades for the memory it "
                    "saves.",
           fields={"seq_lens": Field(list, item=int, low=1, min_len=3),
                   "peak_gb": Field(list, item=float, low=0, min_len=3),
                   "peak_gb_checkpointed": Field(list, item=float, low=0, min_len=3),
                   "conclusion": Field(str, min_len=40)},
           checks=(one_value_per("seq_lens", ["peak_gb", "peak_gb_checkpointed"], "sequence length",
                                 "sequence lengths"), _checkpointing_keeps_less))
