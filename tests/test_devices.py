"""Every tensor of every plugin model follows ``config["device"]`` (issue 11).

On CUDA, when there is one, every plugin model trains one step and ranks all
items there. Without a GPU, the CPU run records what a GPU run would trip
over: a tensor made in a training step or a ranking by this package's code
(or by POT's, which it calls) with a factory that takes a size and no
``device=`` (``torch.zeros(n)``) lands on the CPU whatever the model's device.
"""

import sys
from pathlib import Path

import ot
import pytest
import torch
from torch.overrides import TorchFunctionMode
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_ci2mg.quick_start import build_config, create_dataset
from recbole_ci2mg.registry import PLUGIN_MODELS, get_model

# every plugin model at its defaults, and CI2MG's other optimal-transport solvers and options
CASES = [(name, {}) for name in sorted(PLUGIN_MODELS)] + [
    ("CI2MG", {"ot_solver": "dense"}),
    ("CI2MG", {"ot_solver": "prototype", "ot_eval_plan": "reuse"}),
    ("CI2MG", {"ot_warm_start": True, "ot_plan_refresh": 2}),
]
pytestmark = pytest.mark.usefixtures("one_thread")
IDS = [name + "".join(f"-{k}={v}" for k, v in options.items()) for name, options in CASES]


def prepare(name, settings, options, device):
    small = {"n_prototypes": 8} if name in ("CI2MG", "LightGCN-M") else {}  # the tiny item set
    config = build_config(
        name, "tiny", config_dict={**settings, "train_batch_size": 64, "missing_rate": 0.3, **small, **options}
    )
    config["device"] = torch.device(device)
    init_seed(config["seed"], True)
    train, _, _ = data_preparation(config, create_dataset(config))
    return config, train


PACKAGE = str(Path(__file__).resolve().parents[1] / "recbole_ci2mg")
WATCHED = (PACKAGE, str(Path(ot.__file__).parent))  # this package's code, and POT's, which it calls
# POT's torch backend, built once on first use, keeps two CPU scalars as dtype samples: not data
IGNORED = {(str(Path(ot.__file__).parent / "backend.py"), "__init__")}
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.eye, torch.linspace,
             torch.rand, torch.randn, torch.randint, torch.randperm, torch.tensor}


class FactoriesWithoutDevice(TorchFunctionMode):
    """Records ``file:line`` of every call from ``WATCHED`` code to a factory in ``FACTORIES`` without ``device=``."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            if (
                frame is not None
                and frame.f_code.co_filename.startswith(WATCHED)
                and (frame.f_code.co_filename, frame.f_code.co_name) not in IGNORED
            ):
                self.calls.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")
        return func(*args, **kwargs)


def step_and_rank(model, train, device, mode=None):
    """One training step and one full ranking (the model's calls under ``mode``); the loss and the scores."""
    batch = next(iter(train)).to(device)
    users = Interaction({model.USER_ID: torch.arange(1, model.n_users, device=device)})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.zero_grad()
    model.train()
    with mode or TorchFunctionMode():
        loss = model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        loss.backward()
    optimizer.step()
    model.eval()
    with mode or TorchFunctionMode(), torch.no_grad():
        scores = model.full_sort_predict(users)
    return loss, scores


def plain_tensors(value, path, seen):
    """``(path, tensor)`` of the tensors an object holds outside parameters and buffers."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from plain_tensors(item, f"{path}[{key!r}]", seen)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from plain_tensors(item, f"{path}[{index}]", seen)
    elif isinstance(value, torch.nn.Module):
        for key, item in vars(value).items():
            if key not in ("_parameters", "_buffers", "_modules"):
                yield from plain_tensors(item, f"{path}.{key}", seen)
        for key, module in value.named_children():
            yield from plain_tensors(module, f"{path}.{key}", seen)
    elif type(value).__module__.startswith("recbole_ci2mg"):
        yield from plain_tensors(vars(value), path, seen)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_no_tensor_of_a_step_or_a_ranking_is_made_without_a_device(tiny, name, options):
    config, train = prepare(name, tiny, options, "cpu")
    init_seed(config["seed"], True)
    model = get_model(name)(config, train._dataset).to(config["device"])
    factories = FactoriesWithoutDevice()
    loss, scores = step_and_rank(model, train, config["device"], factories)
    assert not factories.calls, f"tensors made without device=: {sorted(set(factories.calls))}"
    assert torch.isfinite(loss) and torch.isfinite(scores).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_one_step_and_one_ranking_on_cuda(tiny, name, options):
    config, train = prepare(name, tiny, options, "cuda")
    init_seed(config["seed"], True)
    model = get_model(name)(config, train._dataset).to(config["device"])
    loss, scores = step_and_rank(model, train, config["device"])
    assert loss.device.type == "cuda" and torch.isfinite(loss)
    assert scores.device.type == "cuda" and torch.isfinite(scores).all()
    for path, tensor in [*model.named_parameters(), *model.named_buffers(), *plain_tensors(model, "model", set())]:
        assert tensor.device.type == "cuda", path
