"""The forecasters through the Triton kernels on CUDA against the reference on the CPU.

For each model kind (float32, random weights): forward outputs, final state and every parameter's
gradient from one training step on CUDA (dispatch picks the Triton kernels) and on the CPU (the
PyTorch reference), compared by relative error; then streaming `step` on CUDA (the fused step
kernels) against the CUDA forward. Prints one table.

    python -m bench.model_parity
"""

from __future__ import annotations

import copy

import torch

from bench.common import rel_err
from forecast import KINDS, ModelConfig, build_model
from forecast.model import Forecaster
from kernels.dispatch import choose


def _loss(
    model: Forecaster, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    y, state = model(x)
    loss = y.square().mean() + sum(t.square().mean() for _, t in state.named_tensors())
    model.zero_grad()
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]
    flat = torch.cat([t.flatten() for _, t in state.named_tensors()])
    return y.detach(), flat.detach(), grads


def main() -> None:
    torch.manual_seed(0)
    cols = ["kind", "backend (cuda)", "T", "y rel err", "state rel err", "worst grad rel err"]
    print("| " + " | ".join([*cols, "step vs forward"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for kind in KINDS:
        cfg = ModelConfig(kind=kind, n_channels=7, horizon=24, d_model=64, n_layers=2, head_size=16)
        cpu = build_model(cfg)
        with torch.no_grad():
            for p in cpu.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        gpu = copy.deepcopy(cpu).cuda()
        x = torch.randn(8, 96, 7)
        x[torch.rand(x.shape) < 0.05] = float("nan")
        y_c, s_c, g_c = _loss(cpu, x)
        y_g, s_g, g_g = _loss(gpu, x.cuda())
        worst = max(rel_err(a, b.cpu()) for a, b in zip(g_c, g_g, strict=True))
        with torch.no_grad():
            y_f, _ = gpu(x[:, :32].cuda())
            state = gpu.init_state(8)
            ys = []
            for t in range(32):
                y_t, state = gpu.step(x[:, t].cuda(), state)
                ys.append(y_t)
        step_err = rel_err(y_f, torch.stack(ys, 1))
        op = "rwkv7_scan" if kind == "rwkv7" else "selective_scan"
        backend = choose(op, "cuda")
        errs = f"{rel_err(y_c, y_g.cpu()):.2e} | {rel_err(s_c, s_g.cpu()):.2e}"
        print(f"| {kind} | {backend} | 96 | {errs} | {worst:.2e} | {step_err:.2e} |")


if __name__ == "__main__":
    main()
