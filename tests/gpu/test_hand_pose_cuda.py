"""On CUDA a hand-pose phase trains under bf16 autocast with gradient checkpointing, and
the model it writes predicts on the CPU what it predicted on the GPU (float32 heads)."""

from __future__ import annotations

import torch

from genalign.config.hand_pose import TrainHandPoseConfig
from genalign.config.presets import load_preset
from genalign.trainers.hand_pose import load_phase_model, train_phase


def _crops(n: int, size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[120.0, 0.0, size / 2], [0.0, 120.0, size / 2], [0.0, 0.0, 1.0]]).expand(n, 3, 3).clone()
    joints = torch.randn(n, 21, 3, generator=g) * 0.03 + torch.tensor([0.0, 0.0, 0.5])
    uvw = joints @ K.transpose(1, 2)
    return {"images": torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            "joints3d": joints, "joints2d": uvw[..., :2] / uvw[..., 2:], "K": K,
            "object_pose": torch.full((n, 3, 4), float("nan")), "object_extent": torch.full((n, 3), float("nan")),
            "mirrored": torch.zeros(n, dtype=torch.bool), "index": torch.arange(n)}


def test_a_phase_trains_in_bf16_on_cuda_and_its_model_predicts_on_cpu(tmp_path):
    train = load_preset("hand-pose", "e2e")["train"]
    train["model"]["gradient_checkpointing"] = True
    cfg = TrainHandPoseConfig.from_dict(train)
    data = _crops(64, cfg.model.image_size)
    metrics = train_phase(cfg, 0, data, out_dir=tmp_path)
    assert torch.isfinite(torch.tensor(metrics["final_loss"]))
    model, _ = load_phase_model(tmp_path, weights="ema")
    images, K = data["images"][:4].float() / 255.0, data["K"][:4]
    with torch.no_grad():
        cpu = model(images, K).joints_cam
        gpu = model.cuda()(images.cuda(), K.cuda()).joints_cam.cpu()
    assert cpu.dtype == gpu.dtype == torch.float32
    assert torch.allclose(cpu, gpu, atol=1e-2)
