"""The forecasters through the Triton kernels on CUDA against the reference on the CPU.

For each model kind (float32, random weights): forward outputs, final state and every parameter's
gradient from one training step on CUDA (dispatch picks the Triton kernels) and on the CPU (the
PyTorch reference), compared by relative error; then streaming `step` on CUDA (the fused step
kernels) against the CUDA forward. Prints one table.

Then the models train: the same initial weights, the same batches of a noisy multi-seasonal
series, `--train-steps` Adam steps of the training loss (pipelines/fit.py's forecast_loss) on CUDA
through the kernels and on the CPU through the reference; the second table compares the loss at
every step and the trained weights.

Last, a whole model `step` for S series is captured in one CUDA graph and replayed: the third
table compares the replayed forecast and state with the eager step's and times both (median of
200, CUDA events).

    python -m bench.model_parity [--train-steps 200] [--graph-series 1 1024 16384]
"""

from __future__ import annotations

import argparse
import copy
import math

import torch

from bench.common import rel_err, time_ms
from forecast import KINDS, ModelConfig, build_model
from forecast.model import Forecaster
from kernels.dispatch import choose
from pipelines.fit import forecast_loss


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


def _model(kind: str) -> Forecaster:
    """The model every table uses: float32, 7 channels, horizon 24, d_model 64, 2 layers."""
    cfg = ModelConfig(kind=kind, n_channels=7, horizon=24, d_model=64, n_layers=2, head_size=16)
    return build_model(cfg)


def _header(cols: list[str]) -> None:
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))


def main() -> None:
    torch.manual_seed(0)
    _header(["kind", "backend (cuda)", "T", "y rel err", "state rel err", "worst grad rel err",
             "step vs forward"])  # fmt: skip
    for kind in KINDS:
        cpu = _model(kind)
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


def _batches(
    steps: int, batch: int, lookback: int, horizon: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Windows of a 7-channel series with daily and weekly cycles and noise (hourly), 5% missing."""
    g = torch.Generator().manual_seed(1)
    n = 24 * 7 * 40
    t = torch.arange(n, dtype=torch.float64)
    phase = torch.rand(7, generator=g, dtype=torch.float64) * 2 * math.pi
    series = (
        torch.sin(2 * math.pi * t[:, None] / 24 + phase)
        + 0.5 * torch.sin(2 * math.pi * t[:, None] / 168 + 2 * phase)
        + 0.3 * torch.randn(n, 7, generator=g, dtype=torch.float64)
    ).float()
    out = []
    for _ in range(steps):
        start = torch.randint(0, n - lookback - horizon, (batch,), generator=g)
        x = torch.stack([series[s : s + lookback] for s in start.tolist()])
        target = torch.stack(
            [series[s + lookback : s + lookback + horizon] for s in start.tolist()]
        )
        x[torch.rand(x.shape, generator=g) < 0.05] = float("nan")
        out.append((x, target))
    return out


def _train(
    model: Forecaster, batches: list[tuple[torch.Tensor, torch.Tensor]], device: str
) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.fit_scaler(torch.cat([x for x, _ in batches]).reshape(-1, 7))
    model.to(device)
    losses = []
    for x, target in batches:
        y, _ = model(x.to(device), last_only=True)
        loss = forecast_loss(model, y, target.to(device), mse_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def train_parity(steps: int) -> None:
    """Train the same model on CUDA (kernels) and on the CPU (reference) and compare."""
    _header(["kind", "Adam steps", "first loss", "last loss (cpu)", "last loss (cuda)",
             "worst loss rel diff", "weights rel err"])  # fmt: skip
    batches = _batches(steps, batch=16, lookback=96, horizon=24)
    for kind in KINDS:
        torch.manual_seed(0)
        cpu = _model(kind)
        gpu = copy.deepcopy(cpu)
        l_c = _train(cpu, batches, "cpu")
        l_g = _train(gpu, batches, "cuda")
        worst = max(abs(a - b) / abs(a) for a, b in zip(l_c, l_g, strict=True))
        w_c = torch.cat([p.detach().flatten() for p in cpu.parameters()])
        w_g = torch.cat([p.detach().flatten().cpu() for p in gpu.parameters()])
        print(
            f"| {kind} | {steps} | {l_c[0]:.4f} | {l_c[-1]:.4f} | {l_g[-1]:.4f} | "
            f"{worst:.2e} | {rel_err(w_c, w_g):.2e} |"
        )


def graph_step(series: list[int]) -> None:
    """One model step for S series captured whole in a CUDA graph against the eager step."""
    _header(["kind", "series", "forecast rel err", "state rel err", "eager us", "graph us"])
    for kind in KINDS:
        torch.manual_seed(0)
        model = _model(kind).cuda().eval()
        for s in series:
            x = torch.randn(s, 7, device="cuda")
            x[torch.rand(x.shape, device="cuda") < 0.05] = float("nan")
            with torch.no_grad():
                state = model.init_state(s)
                for _ in range(8):  # a state that is not the initial one
                    _, state = model.step(torch.randn(s, 7, device="cuda"), state)
                y_ref, s_ref = model.step(x, state)
                x_in, st_in = x.clone(), state.map(torch.clone)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up off the capture stream, as torch asks
                    for _ in range(3):
                        model.step(x_in, st_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    y_out, s_out = model.step(x_in, st_in)
                graph.replay()
                torch.cuda.synchronize()
                flat = [t for _, t in s_ref.named_tensors()]
                got = [t for _, t in s_out.named_tensors()]
                state_err = max(rel_err(a, b) for a, b in zip(flat, got, strict=True))
                eager = time_ms(lambda _: model.step(x, state), [None], 10, 200)  # noqa: B023
                replay = time_ms(lambda _: graph.replay(), [None], 10, 200)  # noqa: B023
            print(
                f"| {kind} | {s} | {rel_err(y_ref, y_out):.2e} | {state_err:.2e} | "
                f"{eager * 1e3:.0f} | {replay * 1e3:.0f} |"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=200, help="0 skips the training run")
    ap.add_argument("--graph-series", type=int, nargs="*", default=[1, 1024, 16384])
    a = ap.parse_args()
    main()
    if a.train_steps:
        train_parity(a.train_steps)
    if a.graph_series:
        graph_step(a.graph_series)
