"""Where a recurrent step's time goes on the GPU: torch.profiler over a few forward
and forward + backward calls of rnnfused and of torch.nn (cuDNN) at one small size
per kind, float32. For each it prints the kernels' table (GPU time, calls) and the
wall time per step, so that a short GPU lease tells whether a step waits on the
host (launch and dispatch) or on its kernels, and which. Run by gpu_check.sh.

    python benchmarks/gpu_profile.py [--device cuda|cpu] [--shape T,B,I,H]

--device cpu is a dry run of the same code (no GPU times)."""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import rnnfused

KINDS = {
    "rnn_tanh": (rnnfused.RNN, torch.nn.RNN),
    "lstm": (rnnfused.LSTM, torch.nn.LSTM),
    "gru": (rnnfused.GRU, torch.nn.GRU),
}
CALLS = 5  # profiled calls per contender and mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--shape", default="100,16,256,256", help="T,B,I,H")
    args = parser.parse_args()
    T, B, I, H = (int(v) for v in args.shape.split(","))
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    with profile(activities=activities):  # the profiler's own start-up, once
        torch.ones(1, device=device).sum()
    print(f"# gpu_profile: {torch.cuda.get_device_name() if cuda else 'cpu (dry run)'}, "
          f"torch {torch.__version__}, T{T} B{B} I{I} H{H} float32, {CALLS} calls each")
    for kind, classes in KINDS.items():
        for contender, cls in zip(("rnnfused", "torch.nn"), classes):
            torch.manual_seed(0)
            module = cls(I, H).to(device)
            x = torch.randn(T, B, I, device=device, requires_grad=True)
            for mode in ("fwd", "fwdbwd"):
                def call():
                    if mode == "fwd":
                        with torch.no_grad():
                            module(x)
                    else:
                        module(x)[0].sum().backward()
                for _ in range(3):  # warm-up: cuBLAS/cuDNN plans, the caching allocator
                    call()
                synchronize()
                start = time.perf_counter()  # wall time without the profiler
                for _ in range(CALLS):
                    call()
                synchronize()
                per_step_us = (time.perf_counter() - start) / (CALLS * T) * 1e6
                with profile(activities=activities) as prof:
                    for _ in range(CALLS):
                        call()
                    synchronize()
                print(f"\n## {kind} {contender} {mode}: {per_step_us:.1f} us a step (wall)")
                print(prof.key_averages().table(sort_by=sort_key, row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
