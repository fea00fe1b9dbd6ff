"""Memory: what a training step holds, predicted from a config, measured, and checked before a run.

- `ftcourse.memory.model`: the memory model, `estimate(config_or_model, Setup(...))`;
- `ftcourse.memory.measure`: the peak of a real step (torch's profiler, read as its memory
  timeline reads it), and the bytes a model or an optimizer actually holds;
- `ftcourse.memory.plan`: the pre-flight, `plan_run(model, examples, config)`, which warns or
  refuses before a run that will not fit, with what would help.
tests/test_memory.py holds the model within 15% of the measured peaks.
"""

from ftcourse.memory.measure import (
    measure_optimizer_state,
    measure_peak,
    measure_training_step,
    optimizer_bytes,
    stored_bytes,
)
from ftcourse.memory.model import (
    GB,
    MIN_8BIT_SIZE,
    OPTIMIZERS,
    PRECISIONS,
    Setup,
    activation_bytes,
    estimate,
    footprint_of_config,
    footprint_of_model,
    model_state_bytes,
    optimizer_state_bytes,
    precision_of,
)
from ftcourse.memory.plan import MemoryWarning, WontFit, available_memory, plan_run, preflight, suggestions

__all__ = ["GB", "MIN_8BIT_SIZE", "OPTIMIZERS", "PRECISIONS", "MemoryWarning", "Setup", "WontFit",
           "activation_bytes", "available_memory", "estimate", "footprint_of_config", "footprint_of_model",
           "measure_optimizer_state", "measure_peak", "measure_training_step", "model_state_bytes",
           "optimizer_bytes", "optimizer_state_bytes", "plan_run", "precision_of", "preflight",
           "stored_bytes", "suggestions"]
