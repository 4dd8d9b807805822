"""A small forward + backward of every kind on CUDA, checked against the
reference path: the program benchmarks/gpu_check.sh runs under compute-sanitizer."""

import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfused

KINDS = {
    "rnn_tanh": lambda: rnnfused.RNN(12, 20, num_layers=2, bidirectional=True),
    "rnn_relu": lambda: rnnfused.RNN(12, 20, nonlinearity="relu"),
    "lstm": lambda: rnnfused.LSTM(12, 20, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: rnnfused.LSTM(12, 20, proj_size=7),
    "gru": lambda: rnnfused.GRU(12, 20, num_layers=2, bidirectional=True),
}


def run(module, x, packed):
    if packed:
        x = pack_padded_sequence(x, [9, 7, 7, 3, 1], enforce_sorted=False)
    out, _ = module(x)
    out = out.data if packed else out
    return out, torch.autograd.grad(out.square().sum(), [p for p in module.parameters()])


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    failures = 0
    for dtype in (torch.float32, torch.bfloat16):
        for name, make in KINDS.items():
            for packed in (False, True):
                torch.manual_seed(0)
                module = make().to("cuda", dtype)
                x = torch.randn(9, 5, 12, device="cuda", dtype=dtype)
                out, grads = run(module, x, packed)
                with rnnfused.reference_mode():
                    ref_out, ref_grads = run(module, x, packed)
                tol = 1e-4 if dtype == torch.float32 else 5e-2
                ok = torch.allclose(out.float(), ref_out.float(), atol=tol, rtol=tol) and all(
                    torch.allclose(g.float(), r.float(), atol=tol * 10, rtol=tol * 10)
                    for g, r in zip(grads, ref_grads)
                )
                failures += not ok
                print(f"{name:10s} {str(dtype):15s} packed={packed!s:5s} {'ok' if ok else 'MISMATCH'}")
    torch.cuda.synchronize()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
