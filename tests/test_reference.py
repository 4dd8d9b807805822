"""The pure-PyTorch fallback (rnnfused.reference_mode) and the backend report.

The module comparisons run a subset of test_modules.py / test_cells.py inside
reference_mode(); the profiler checks show which path really ran, so that the rest of the
suite is known to exercise the fused kernels whenever backend_info() says they are compiled.
"""

import os

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import rnnfused
from helpers import (
    CELL_KINDS,
    FORMS,
    INPUT_SIZE,
    MODULE_KINDS,
    SEQ_LEN,
    assert_results_equal,
    compare_modules,
    flat_tensors,
    make_kind_twins,
    run_cell_loop,
)

EXTENSION = bool(rnnfused.backend_info()["extension"])
KIND = pytest.mark.parametrize("kind", MODULE_KINDS)


def rnnfused_op_names(fn) -> set[str]:
    """Names of the rnnfused:: operators that ran during fn()."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("rnnfused::")}


def forward_backward(module, device, dtype):
    shape = (2, INPUT_SIZE) if isinstance(module, torch.nn.RNNCellBase) else (SEQ_LEN, 2, INPUT_SIZE)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    out = module(x)
    out = out[0] if isinstance(out, tuple) else out
    out.sum().backward()


# ---------------------------------------------------------------- backend report

def test_backend_info_keys():
    info = rnnfused.backend_info()
    assert isinstance(info, dict)
    assert isinstance(info["extension"], bool)
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["extension"], "CUDA kernels without the extension"


def test_extension_required_when_asked():
    """CI sets RNNFUSED_REQUIRE_EXTENSION=1 so that a broken build cannot pass on the fallback."""
    if os.environ.get("RNNFUSED_REQUIRE_EXTENSION") != "1":
        pytest.skip("RNNFUSED_REQUIRE_EXTENSION is not set")
    assert rnnfused.backend_info()["extension"] is True
    if torch.cuda.is_available():
        assert rnnfused.backend_info()["cuda"] is True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_backend_info_cpu_path(dtype):
    path = rnnfused.backend_info("cpu", dtype)
    assert path in ("fused", "reference")
    assert path == ("fused" if EXTENSION else "reference")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device present")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_backend_info_cuda_path(dtype):
    expected = "fused" if rnnfused.backend_info()["cuda"] else "reference"
    assert rnnfused.backend_info("cuda", dtype) == expected


def test_backend_info_other_device_is_reference():
    assert rnnfused.backend_info("meta", torch.float32) == "reference"


def test_backend_info_inside_reference_mode():
    with rnnfused.reference_mode():
        assert rnnfused.backend_info("cpu", torch.float32) == "reference"
    assert rnnfused.backend_info("cpu", torch.float32) == ("fused" if EXTENSION else "reference")


@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_fused_kernels_really_run(kind):
    """When the CPU path is fused, forward and backward run rnnfused:: ops; inside
    reference_mode() none run."""
    if rnnfused.backend_info("cpu", torch.float32) != "fused":
        pytest.skip("no compiled extension: the CPU path is the reference")
    _, fused = make_kind_twins(kind)
    ran = rnnfused_op_names(lambda: forward_backward(fused, "cpu", torch.float32))
    assert ran, "no rnnfused:: operator ran on the fused path"
    assert any("backward" in name for name in ran), f"no backward op among {sorted(ran)}"
    with rnnfused.reference_mode():
        ran_ref = rnnfused_op_names(lambda: forward_backward(fused, "cpu", torch.float32))
    assert not ran_ref, f"reference_mode() still ran {sorted(ran_ref)}"


# ---------------------------------------------------------------- modules on the fallback

@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@KIND
def test_reference_mode_matches_torch(kind, bidirectional, form, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                                 bidirectional=bidirectional, batch_first=(form == "batched"))
    with rnnfused.reference_mode():
        compare_modules(ref, fused, form, True, device, torch.float64)
        compare_modules(ref, fused, form, False, device, torch.float64)


@KIND
def test_reference_mode_float32_no_bias(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float32, num_layers=3,
                                 bidirectional=True, bias=False)
    with rnnfused.reference_mode():
        compare_modules(ref, fused, "packed_sorted", True, device, torch.float32)


@KIND
def test_reference_mode_dropout_same_rng_cpu(kind):
    ref, fused = make_kind_twins(kind, device="cpu", dtype=torch.float64, num_layers=2,
                                 dropout=0.5)
    x = torch.randn(SEQ_LEN, 3, INPUT_SIZE, dtype=torch.float64)
    torch.manual_seed(7)
    out_ref, _ = ref(x)
    with rnnfused.reference_mode():
        torch.manual_seed(7)
        out_fused, _ = fused(x)
    torch.testing.assert_close(out_fused, out_ref, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_reference_mode_cells(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64)
    xs = torch.randn(SEQ_LEN, 3, INPUT_SIZE, device=device, dtype=torch.float64)
    expected = run_cell_loop(ref, xs, None)
    with rnnfused.reference_mode():
        actual = run_cell_loop(fused, xs, None)
    assert_results_equal(actual, expected, torch.float64, context=kind)


def test_reference_mode_restores_on_exception():
    """Leaving the context through an exception restores the normal path."""
    with pytest.raises(ZeroDivisionError):
        with rnnfused.reference_mode():
            1 / 0
    assert rnnfused.backend_info("cpu", torch.float32) == ("fused" if EXTENSION else "reference")


def test_without_the_extension_everything_runs_on_the_reference_path():
    """With no compiled extension the package still imports, says why, warns once,
    and every module gives torch.nn's results on the reference path."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["rnnfused._C"] = None  # as if the extension were never built
        import torch, rnnfused
        info = rnnfused.backend_info()
        assert info["extension"] is False and "rnnfused._C" in info["extension_error"], info
        assert rnnfused.backend_info("cpu", torch.float32) == "reference"
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name in ["RNN", "LSTM", "GRU"]:
                ref = getattr(torch.nn, name)(3, 4, num_layers=2, bidirectional=True)
                mod = getattr(rnnfused, name)(3, 4, num_layers=2, bidirectional=True)
                mod.load_state_dict(ref.state_dict())
                x = torch.randn(5, 2, 3)
                torch.testing.assert_close(mod(x)[0], ref(x)[0])
            cell = rnnfused.GRUCell(3, 4)
            ref_cell = torch.nn.GRUCell(3, 4)
            cell.load_state_dict(ref_cell.state_dict())
            torch.testing.assert_close(cell(x[0]), ref_cell(x[0]))
        messages = [str(w.message) for w in caught if "reference path" in str(w.message)]
        assert len(messages) == 1, messages
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_meta_device_gives_torch_nn_shapes_without_a_warning(name):
    """On the meta device (shape inference, deferred initialisation) a forward gives
    torch.nn's result shapes; nothing computes, so the reference path it takes is not
    worth a warning."""
    import warnings

    cell = name.endswith("Cell")
    x = torch.empty(3, 4, device="meta") if cell else torch.empty(5, 3, 4, device="meta")
    shapes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module in (getattr(torch.nn, name)(4, 6, device="meta"), getattr(rnnfused, name)(4, 6, device="meta")):
            flat = flat_tensors(module(x))
            assert all(t.device.type == "meta" for t in flat)
            shapes.append([t.shape for t in flat])
    assert shapes[1] == shapes[0]
