"""Adapters: the LoraConfig from a trainer's fields, attaching freezes the base, the
reference is the base model exactly, the saved directory reloads."""

from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from genalign.training.adapters import attach_adapter, lora_config, reference_mode, save_adapter_dir


@dataclass(frozen=True)
class Fields:
    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    adapter: str = "lora"


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)
        self.out = torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.relu(self.proj(x)))


def _adapted(seed: int = 0, **fields):
    torch.manual_seed(seed)
    base = Tiny()
    model = attach_adapter(base, lora_config(Fields(**fields), ["proj"]))
    with torch.no_grad():  # lora_B starts at zero: give the adapter an effect
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model


def test_lora_config_from_fields():
    lora = lora_config(Fields(rank=8, alpha=16.0, dropout=0.1, adapter="dora"), ("to_q", "to_k"))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 16.0, 0.1)
    assert set(lora.target_modules) == {"to_q", "to_k"}
    assert lora.use_dora and lora.bias == "none"
    assert not lora_config(Fields(), ["proj"]).use_dora


def test_lora_config_rejects_full_fine_tuning():
    with pytest.raises(ValueError, match=r"'full' has no peft adapter config.*\['lora', 'dora'\]"):
        lora_config(Fields(adapter="full"), ["proj"])


def test_attach_freezes_everything_but_the_adapter():
    model = _adapted()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".proj." in n for n in trainable)


def test_reference_mode_is_the_base_model_without_a_graph():
    model = _adapted()
    x = torch.randn(4, 3)
    torch.manual_seed(0)
    expected = Tiny()(x)  # the same init as the adapted model's base
    model.train()
    with reference_mode(model):
        ref = model(x)
        assert not model.training and not ref.requires_grad
    assert model.training
    torch.testing.assert_close(ref, expected, rtol=0, atol=0)
    assert not torch.allclose(model(x), expected)  # the adapter is back on

    with pytest.raises(RuntimeError, match="inside"), reference_mode(model):
        raise RuntimeError("inside")
    assert model.training and not torch.allclose(model(x), expected)


def test_save_adapter_dir_writes_the_peft_directory_beside_other_files(tmp_path):
    from peft import PeftModel

    model = _adapted(adapter="dora").eval()
    (tmp_path / "genalign.json").write_text("{}")
    save_adapter_dir(model, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "genalign.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # the temporary directory is gone
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)

    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(Tiny(), str(tmp_path)).eval()
    x = torch.randn(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


def _dit_with_trained_adapter(dropout: float = 0.0):
    from genalign.config.part_dit import PartDiTConfig
    from genalign.models.part_dit import PartDiT

    torch.manual_seed(0)
    cfg = PartDiTConfig(hidden=32, depth=2, heads=2, cond_dim=8, max_parts=4)
    base = PartDiT(cfg)
    with torch.no_grad():  # adaLN-Zero and proj_out start at zero; give them weights
        for p in base.parameters():
            if not p.any():
                p.normal_(std=0.05)
    model = attach_adapter(base, lora_config(Fields(dropout=dropout), ["to_q", "to_k", "to_v", "to_out"]))
    with torch.no_grad():  # lora_B starts at zero: make the adapter change the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    g = torch.Generator().manual_seed(1)
    inputs = (
        torch.randn(3, 4, cfg.tokens_per_part, cfg.token_dim, generator=g),
        torch.rand(3, generator=g),
        torch.randn(3, 5, 8, generator=g),
        torch.ones(3, 4, dtype=torch.bool),
    )
    return model, inputs


def test_adapter_switch_gives_reference_mode_bit_for_bit_and_restores_the_adapter():
    from genalign.training.adapters import AdapterSwitch

    model, inputs = _dit_with_trained_adapter()
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with reference_mode(model):
        expected = model(*inputs)
    switch = AdapterSwitch(model)
    assert not switch.eval_mode  # PartDiT has no dropout or norm statistics
    with switch.reference():
        ref = model(*inputs)
        assert model.training and not ref.requires_grad
    torch.testing.assert_close(ref, expected, rtol=0, atol=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert not torch.allclose(model(*inputs), expected)  # the adapter is back on

    with pytest.raises(RuntimeError, match="inside"), switch.reference():
        raise RuntimeError("inside")
    assert not torch.allclose(model(*inputs), expected)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_adapter_switch_flips_to_eval_only_where_a_module_needs_it():
    from genalign.training.adapters import AdapterSwitch, mode_dependent_modules

    # the adapter's own dropout does not count: a disabled adapter does not run it
    model, _ = _dit_with_trained_adapter(dropout=0.3)
    assert mode_dependent_modules(model) == []

    class WithDropout(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 3)
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.proj(x))

    torch.manual_seed(0)
    model = attach_adapter(WithDropout(), lora_config(Fields(), ["proj"]))
    assert mode_dependent_modules(model) == ["base_model.model.drop"]
    switch = AdapterSwitch(model)
    assert switch.eval_mode
    model.train()
    x = torch.randn(64, 3)
    with switch.reference():
        assert not model.training
        torch.testing.assert_close(model(x), model(x))  # no dropout in the reference
    assert model.training
