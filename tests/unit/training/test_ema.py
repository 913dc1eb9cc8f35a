"""EMA of parameters, worked by hand on one scalar parameter w.

Updates are counted from 1 and the first copies the weights (d_1 = 0):
- fixed decay 0.9: w = 2 -> shadow 2; w = 4 -> 0.9 * 2 + 0.1 * 4 = 2.2.
- warm-up with inv_gamma = 1, power = 1: d_k = 1 - 1/k, the running mean: w = 2 -> 2;
  w = 4 -> d_2 = 1/2: (2 + 4) / 2 = 3; w = 9 -> d_3 = 2/3: (2 + 4 + 9) / 3 = 5.
  Capped at decay = 0.6, the third update uses 0.6: 0.6 * 3 + 0.4 * 9 = 5.4.
"""

import pytest
import torch

from genalign.training.checkpoints import read_checkpoint_tensors, save_checkpoint
from genalign.training.ema import EMA


class Scalar(torch.nn.Module):
    def __init__(self, w: float = 1.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.frozen = torch.nn.Parameter(torch.tensor(10.0), requires_grad=False)


def _set(model: Scalar, value: float) -> None:
    """What an optimizer step would do to w."""
    with torch.no_grad():
        model.w.fill_(value)


def _shadow(ema: EMA) -> float:
    return ema.shadow["w"].item()


def test_fixed_decay_two_steps():
    model = Scalar(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    assert _shadow(ema) == 1.0 and set(ema.shadow) == {"w"}  # frozen parameters not tracked
    _set(model, 2.0)
    assert ema.update(model) == 0.0
    assert _shadow(ema) == pytest.approx(2.0)
    _set(model, 4.0)
    assert ema.update(model) == 0.9
    assert _shadow(ema) == pytest.approx(2.2)


def test_warmup_is_the_running_mean_with_power_one():
    model = Scalar(1.0)
    ema = EMA(model, decay=0.99, inv_gamma=1.0, power=1.0)
    for value, expected_decay, expected in ((2.0, 0.0, 2.0), (4.0, 0.5, 3.0), (9.0, 2 / 3, 5.0)):
        _set(model, value)
        assert ema.update(model) == pytest.approx(expected_decay)
        assert _shadow(ema) == pytest.approx(expected)


def test_warmup_is_capped_at_decay_and_floored_at_min_decay():
    model = Scalar(1.0)
    ema = EMA(model, decay=0.6, inv_gamma=1.0, power=1.0)
    for value in (2.0, 4.0, 9.0):
        _set(model, value)
        ema.update(model)
    assert _shadow(ema) == pytest.approx(5.4)

    floored = EMA(model, decay=0.9, inv_gamma=1.0, power=1.0, min_decay=0.7)
    assert floored.decay_at(1) == 0.0  # the first update still copies the weights
    assert floored.decay_at(2) == 0.7  # 1 - 1/2 = 0.5, floored
    assert floored.decay_at(20) == 0.9  # 1 - 1/20 = 0.95, capped


def test_default_warmup_power_two_thirds():
    ema = EMA(Scalar(), decay=0.9999)
    assert ema.decay_at(2) == pytest.approx(1 - 2 ** (-2 / 3))  # 0.370
    assert ema.decay_at(31623) == pytest.approx(0.999, abs=1e-6)  # timm's "0.999 at 31.6K"


def test_apply_to_swaps_the_weights_in_and_back():
    model = Scalar(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    _set(model, 2.0)
    ema.update(model)
    _set(model, 4.0)
    ema.update(model)
    with ema.apply_to(model) as m:
        assert m is model and model.w.item() == pytest.approx(2.2)
    assert model.w.item() == 4.0
    with pytest.raises(RuntimeError, match="eval failed"), ema.apply_to(model):
        raise RuntimeError("eval failed")
    assert model.w.item() == 4.0 and model.w.requires_grad


def test_state_dict_round_trips_through_a_checkpoint(tmp_path):
    model = Scalar(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    _set(model, 2.0)
    ema.update(model)
    save_checkpoint(
        tmp_path, 1, tensors={"ema": ema.state_dict()}, optimizer=None, state={}, keep=1
    )

    resumed = EMA(Scalar(7.0), decay=0.9, warmup=False)
    resumed.load_state_dict(
        read_checkpoint_tensors(tmp_path / "checkpoints" / "step_00000001", "ema")
    )
    assert resumed.num_updates == 1 and _shadow(resumed) == 2.0
    _set(model, 4.0)
    assert resumed.update(model) == ema.update(model) == 0.9
    assert _shadow(resumed) == _shadow(ema)


def test_errors():
    with pytest.raises(ValueError, match="decay: expected 0 <= decay < 1"):
        EMA(Scalar(), decay=1.0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        EMA(torch.nn.Linear(2, 2).requires_grad_(False), decay=0.9)
    ema = EMA(Scalar(), decay=0.9)
    with pytest.raises(ValueError, match=r"missing \['w'\], unexpected \['v'\]"):
        ema.load_state_dict({"shadow.v": torch.tensor(1.0), "num_updates": torch.tensor(0)})
    with pytest.raises(ValueError, match="no 'num_updates' entry"):
        ema.load_state_dict({"shadow.w": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['w'\]"):
        ema.update(torch.nn.Linear(1, 1))
