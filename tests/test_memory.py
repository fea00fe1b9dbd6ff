import torch

from ftcourse.memory import measure_peak, measure_training_step


def test_measured_parameters_and_optimizer_state_are_exact():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
    batch = {"x": torch.randn(32, 256)}
    loss = lambda m, b: (m(b["x"]).pow(2).sum(), torch.tensor(1.0))
    before = [p.clone() for p in model.parameters()]
    peak = measure_training_step(model, batch, loss_fn=loss)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert peak["parameters"] == weights
    assert peak["optimizer_state"] >= 2 * weights            # Adam: two moments per weight (+ steps)
    assert peak["total"] >= peak["parameters"] + peak["optimizer_state"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "measuring must not train"


def test_measure_peak_sees_a_temporary_allocation():
    small = measure_peak(lambda: torch.ones(10).sum())
    large = measure_peak(lambda: torch.ones(1_000_000).sum())
    assert large["total"] - small["total"] >= 4_000_000 - 100   # a million float32 ones
