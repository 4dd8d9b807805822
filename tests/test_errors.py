"""Every misuse raises what torch.nn raises: the same exception type and the same message.

Each case is a function of a namespace (torch.nn or rnnfused) that builds a module from that
namespace and misuses it.  The test runs the case with both namespaces and compares what they
raise; it first checks that torch.nn raises at all, so no case can pass vacuously.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfused

T, B, I, H = 3, 2, 4, 6
CUDA = torch.cuda.is_available()


def x3(b=B, i=I, dtype=torch.float32):
    return torch.randn(T, b, i, dtype=dtype)


def packed(lengths=(3, 2), enforce_sorted=True):
    return pack_padded_sequence(torch.randn(T, len(lengths), I), torch.tensor(lengths),
                                enforce_sorted=enforce_sorted)


CASES = {
    # ---- input rank / size
    "lstm_input_1d": lambda nn: nn.LSTM(I, H)(torch.randn(I)),
    "gru_input_4d": lambda nn: nn.GRU(I, H)(torch.randn(1, T, B, I)),
    "rnn_input_1d": lambda nn: nn.RNN(I, H)(torch.randn(I)),
    "rnn_input_4d": lambda nn: nn.RNN(I, H)(torch.randn(1, T, B, I)),
    "lstm_wrong_input_size": lambda nn: nn.LSTM(I, H)(x3(i=I + 1)),
    "gru_wrong_input_size": lambda nn: nn.GRU(I, H)(x3(i=I - 1)),
    "rnn_wrong_input_size_unbatched": lambda nn: nn.RNN(I, H)(torch.randn(T, I + 2)),
    "lstm_wrong_input_size_packed": lambda nn: nn.LSTM(I + 1, H)(packed()),
    # ---- hx shape (layers, batch, hidden)
    "gru_hx_wrong_layers": lambda nn: nn.GRU(I, H, num_layers=2)(x3(), torch.randn(1, B, H)),
    "gru_hx_wrong_layers_bidir": lambda nn: nn.GRU(I, H, bidirectional=True)(
        x3(), torch.randn(1, B, H)),
    "rnn_hx_wrong_batch": lambda nn: nn.RNN(I, H)(x3(), torch.randn(1, B + 1, H)),
    "rnn_hx_wrong_hidden": lambda nn: nn.RNN(I, H)(x3(), torch.randn(1, B, H + 1)),
    "lstm_h_wrong_batch": lambda nn: nn.LSTM(I, H)(
        x3(), (torch.randn(1, B + 1, H), torch.randn(1, B, H))),
    "lstm_h_wrong_layers": lambda nn: nn.LSTM(I, H, num_layers=2)(
        x3(), (torch.randn(1, B, H), torch.randn(2, B, H))),
    "lstm_c_wrong_size": lambda nn: nn.LSTM(I, H)(
        x3(), (torch.randn(1, B, H), torch.randn(1, B, H + 1))),
    "lstm_c_wrong_batch": lambda nn: nn.LSTM(I, H)(
        x3(), (torch.randn(1, B, H), torch.randn(1, B + 1, H))),
    "lstm_proj_h_given_hidden_size": lambda nn: nn.LSTM(I, H, proj_size=2)(
        x3(), (torch.randn(1, B, H), torch.randn(1, B, H))),
    "lstm_proj_c_given_proj_size": lambda nn: nn.LSTM(I, H, proj_size=2)(
        x3(), (torch.randn(1, B, 2), torch.randn(1, B, 2))),
    "rnn_hx_wrong_unbatched": lambda nn: nn.RNN(I, H)(torch.randn(T, I), torch.randn(2, H)),
    # ---- hx rank vs input rank
    "gru_batched_hx_2d": lambda nn: nn.GRU(I, H)(x3(), torch.randn(1, H)),
    "gru_unbatched_hx_3d": lambda nn: nn.GRU(I, H)(torch.randn(T, I), torch.randn(1, 1, H)),
    "rnn_batched_hx_2d": lambda nn: nn.RNN(I, H)(x3(), torch.randn(1, H)),
    "rnn_unbatched_hx_3d": lambda nn: nn.RNN(I, H)(torch.randn(T, I), torch.randn(1, 1, H)),
    "lstm_batched_hx_2d": lambda nn: nn.LSTM(I, H)(x3(), (torch.randn(1, H), torch.randn(1, H))),
    "lstm_unbatched_hx_3d": lambda nn: nn.LSTM(I, H)(
        torch.randn(T, I), (torch.randn(1, 1, H), torch.randn(1, 1, H))),
    # ---- dtype
    "lstm_float64_input": lambda nn: nn.LSTM(I, H)(x3(dtype=torch.float64)),
    "gru_float64_input": lambda nn: nn.GRU(I, H)(x3(dtype=torch.float64)),
    "rnn_float64_input_unbatched": lambda nn: nn.RNN(I, H)(torch.randn(T, I, dtype=torch.float64)),
    "lstm_float32_input_float64_module": lambda nn: nn.LSTM(I, H, dtype=torch.float64)(x3()),
    # a state of another dtype: ATen's addmm and (without biases) mm word the error differently
    "gru_float64_hx": lambda nn: nn.GRU(I, H)(x3(), torch.randn(1, B, H, dtype=torch.float64)),
    "rnn_no_bias_float64_hx": lambda nn: nn.RNN(I, H, bias=False)(
        x3(), torch.randn(1, B, H, dtype=torch.float64)),
    "gru_no_bias_float32_hx_float64_module": lambda nn: nn.GRU(
        I, H, bias=False, dtype=torch.float64)(x3(dtype=torch.float64), torch.randn(1, B, H)),
    # a non-float state (a program's zeros made without a dtype from an integer tensor):
    # ATen names integer dtypes its own way (Long, Int, Bool)
    "gru_int64_hx": lambda nn: nn.GRU(I, H)(x3(), torch.zeros(1, B, H, dtype=torch.long)),
    "lstmcell_int32_hx": lambda nn: nn.LSTMCell(I, H)(
        torch.randn(B, I), (torch.zeros(B, H, dtype=torch.int32), torch.zeros(B, H))),
    "rnncell_bool_hx": lambda nn: nn.RNNCell(I, H)(torch.randn(B, I), torch.zeros(B, H, dtype=torch.bool)),
    # torch.nn.LSTM leaves packed input's dtype to _VF.lstm, whose input product then fails
    "lstm_packed_float32_input_float64_module": lambda nn: nn.LSTM(I, H, dtype=torch.float64)(
        packed(), (torch.randn(1, 2, H, dtype=torch.float64),) * 2),
    "lstm_no_bias_packed_float32_input_float64_module": lambda nn: nn.LSTM(
        I, H, bias=False, dtype=torch.float64)(
        packed(), (torch.randn(1, 2, H, dtype=torch.float64),) * 2),
    "lstm_no_bias_float32_hx_float64_module": lambda nn: nn.LSTM(
        I, H, bias=False, dtype=torch.float64)(
        x3(dtype=torch.float64), (torch.randn(1, B, H), torch.randn(1, B, H))),
    # ---- PackedSequence with hx of the wrong batch
    "gru_packed_hx_wrong_batch": lambda nn: nn.GRU(I, H)(packed(), torch.randn(1, 3, H)),
    "rnn_packed_hx_wrong_batch": lambda nn: nn.RNN(I, H)(packed(), torch.randn(1, 3, H)),
    "rnn_packed_unsorted_hx_wrong_hidden": lambda nn: nn.RNN(I, H)(
        packed((2, 3), enforce_sorted=False), torch.randn(1, 2, H + 1)),
    # torch.nn.LSTM does not check hx for packed input; the error comes from inside _VF.lstm
    "lstm_packed_hx_wrong_batch": lambda nn: nn.LSTM(I, H)(
        packed(), (torch.randn(1, 3, H), torch.randn(1, 3, H))),
    # ---- cells
    "lstmcell_input_3d": lambda nn: nn.LSTMCell(I, H)(torch.randn(1, B, I)),
    "grucell_input_3d": lambda nn: nn.GRUCell(I, H)(torch.randn(1, B, I)),
    "rnncell_input_3d": lambda nn: nn.RNNCell(I, H)(torch.randn(1, B, I)),
    "lstmcell_wrong_input_size": lambda nn: nn.LSTMCell(I, H)(torch.randn(B, I + 1)),
    "grucell_wrong_input_size": lambda nn: nn.GRUCell(I, H)(torch.randn(B, I + 1)),
    "rnncell_wrong_input_size_1d": lambda nn: nn.RNNCell(I, H)(torch.randn(I + 1)),
    "lstmcell_hx_wrong_batch": lambda nn: nn.LSTMCell(I, H)(
        torch.randn(B, I), (torch.randn(B + 1, H), torch.randn(B + 1, H))),
    "lstmcell_hx_wrong_hidden": lambda nn: nn.LSTMCell(I, H)(
        torch.randn(B, I), (torch.randn(B, H - 1), torch.randn(B, H - 1))),
    "lstmcell_cx_wrong_hidden": lambda nn: nn.LSTMCell(I, H)(
        torch.randn(B, I), (torch.randn(B, H), torch.randn(B, H - 1))),
    "grucell_hx_wrong_batch": lambda nn: nn.GRUCell(I, H)(torch.randn(B, I), torch.randn(B + 1, H)),
    "grucell_hx_wrong_hidden": lambda nn: nn.GRUCell(I, H)(torch.randn(B, I), torch.randn(B, H + 2)),
    "rnncell_hx_wrong_batch": lambda nn: nn.RNNCell(I, H)(torch.randn(B, I), torch.randn(B + 1, H)),
    "rnncell_hx_wrong_hidden": lambda nn: nn.RNNCell(I, H)(torch.randn(B, I), torch.randn(B, H + 1)),
    "rnncell_hx_1d_for_batched": lambda nn: nn.RNNCell(I, H)(torch.randn(B, I), torch.randn(H)),
    # the batch sizes agree, so ATen goes on to read the 1-D state's size(1)
    "grucell_hx_1d_batch_equal_hidden": lambda nn: nn.GRUCell(I, H)(
        torch.randn(H, I), torch.randn(H)),
    "lstmcell_cx_1d_batch_equal_hidden": lambda nn: nn.LSTMCell(I, H)(
        torch.randn(H, I), (torch.randn(H, H), torch.randn(H))),
    "grucell_float64_input": lambda nn: nn.GRUCell(I, H)(torch.randn(B, I, dtype=torch.float64)),
    "rnncell_no_bias_float64_input": lambda nn: nn.RNNCell(I, H, bias=False)(
        torch.randn(B, I, dtype=torch.float64)),
    "lstmcell_no_bias_float64_hx": lambda nn: nn.LSTMCell(I, H, bias=False)(
        torch.randn(B, I), (torch.randn(B, H, dtype=torch.float64), torch.randn(B, H))),
    "grucell_no_bias_bfloat16_input_unbatched": lambda nn: nn.GRUCell(I, H, bias=False)(
        torch.randn(I, dtype=torch.bfloat16)),
    # ---- constructors
    "lstm_dropout_above_1": lambda nn: nn.LSTM(I, H, num_layers=2, dropout=1.5),
    "gru_dropout_negative": lambda nn: nn.GRU(I, H, num_layers=2, dropout=-0.1),
    "rnn_dropout_bool": lambda nn: nn.RNN(I, H, num_layers=2, dropout=True),
    "lstm_negative_hidden": lambda nn: nn.LSTM(I, -H),
    "lstm_zero_hidden": lambda nn: nn.LSTM(I, 0),
    "gru_negative_input": lambda nn: nn.GRU(-I, H),
    "rnn_zero_layers": lambda nn: nn.RNN(I, H, num_layers=0),
    "lstm_proj_equal_hidden": lambda nn: nn.LSTM(I, H, proj_size=H),
    "lstm_proj_above_hidden": lambda nn: nn.LSTM(I, H, proj_size=H + 3),
    "lstm_proj_negative": lambda nn: nn.LSTM(I, H, proj_size=-1),
    "gru_proj_size": lambda nn: nn.GRU(I, H, proj_size=2),
    "rnn_proj_size": lambda nn: nn.RNN(I, H, proj_size=2),
    "rnn_bad_nonlinearity": lambda nn: nn.RNN(I, H, nonlinearity="sigmoid"),
    "rnn_float_hidden": lambda nn: nn.RNN(I, 6.0),
    "lstm_str_hidden": lambda nn: nn.LSTM(I, "6"),
    "rnncell_bad_nonlinearity": lambda nn: nn.RNNCell(I, H, nonlinearity="gelu")(
        torch.randn(B, I)),
    "lstmcell_negative_hidden": lambda nn: nn.LSTMCell(I, -1),
}

if CUDA:
    CASES["lstm_cuda_input_cpu_module"] = lambda nn: nn.LSTM(I, H)(x3().cuda())
    CASES["gru_cpu_input_cuda_module"] = lambda nn: nn.GRU(I, H, device="cuda")(x3())
    CASES["lstm_cuda_hx_cpu_input"] = lambda nn: nn.LSTM(I, H, device="cuda")(
        x3().cuda(), (torch.randn(1, B, H), torch.randn(1, B, H)))
    CASES["grucell_cuda_input_cpu_module"] = lambda nn: nn.GRUCell(I, H)(
        torch.randn(B, I, device="cuda"))


def capture(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the point is to capture whatever is raised
        return type(e), str(e)
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_error_matches_torch(case):
    torch.manual_seed(0)
    expected = capture(lambda: CASES[case](torch.nn))
    assert expected is not None, f"{case}: torch.nn raises nothing, the case is vacuous"
    torch.manual_seed(0)
    actual = capture(lambda: CASES[case](rnnfused))
    assert actual is not None, f"{case}: rnnfused raised nothing; torch.nn raised {expected}"
    assert actual[0] is expected[0], f"{case}: {actual} vs torch.nn {expected}"
    assert actual[1] == expected[1], f"{case}: message differs"


@pytest.mark.parametrize("case", ["lstm", "gru", "rnn"])
def test_error_inside_reference_mode(case):
    """The fallback path checks arguments the same way."""
    cases = {
        "lstm": lambda nn: nn.LSTM(I, H)(x3(), (torch.randn(1, B, H), torch.randn(1, B, H + 1))),
        "gru": lambda nn: nn.GRU(I, H)(x3(i=I + 1)),
        "rnn": lambda nn: nn.RNN(I, H, num_layers=2)(x3(), torch.randn(1, B, H)),
    }
    expected = capture(lambda: cases[case](torch.nn))
    assert expected is not None
    with rnnfused.reference_mode():
        actual = capture(lambda: cases[case](rnnfused))
    assert actual == expected


# torch.nn's messages for a cell's arguments on a CUDA device and the CPU, as an H200
# gave them (torch 2.11, 2026-12-04): (cell, bias, where the CUDA tensors are) ->
# (which product argument, its device, the others' device, the ATen op).
_CUDA_MIX = {
    ("lstm", True, "input"): ("mat2", "cpu", "cuda:0", "mm"),
    ("lstm", True, "module"): ("mat1", "cpu", "cuda:0", "addmm"),
    ("lstm", True, "module+input"): ("mat2", "cuda:0", "cpu", "mm"),
    ("lstm", True, "state"): ("mat1", "cuda:0", "cpu", "addmm"),
    ("rnn", True, "input"): ("mat1", "cuda:0", "cpu", "addmm"),
    ("rnn", True, "module"): ("mat1", "cpu", "cuda:0", "addmm"),
    ("rnn", True, "module+input"): ("mat1", "cpu", "cuda:0", "addmm"),
    ("rnn", True, "state"): ("mat1", "cuda:0", "cpu", "addmm"),
    ("lstm", False, "input"): ("mat2", "cpu", "cuda:0", "mm"),
    ("lstm", False, "module"): ("mat2", "cuda:0", "cpu", "mm"),
    ("lstm", False, "module+input"): ("mat2", "cuda:0", "cpu", "mm"),
    ("lstm", False, "state"): ("mat2", "cpu", "cuda:0", "mm"),
}


@pytest.mark.parametrize("cell, bias, on_cuda", list(_CUDA_MIX))
def test_cell_device_mix_messages(cell, bias, on_cuda):
    """The message a cell raises when its arguments mix CUDA and CPU, checked without
    a GPU: stand-ins carry the devices (GRU as LSTM; a bias-free RNN cell as LSTM's)."""
    from types import SimpleNamespace

    from rnnfused.functional import _product_device_error

    def arg(cuda):
        device = torch.device("cuda:0" if cuda else "cpu")
        return SimpleNamespace(device=device, is_cuda=cuda)

    module_cuda = on_cuda.startswith("module")
    x = arg(on_cuda in ("input", "module+input"))
    h = arg(on_cuda in ("input", "state"))  # a state not given follows the input
    w_ih, w_hh = arg(module_cuda), arg(module_cuda)
    b_ih, b_hh = (arg(module_cuda), arg(module_cuda)) if bias else (None, None)
    name, device, others, op = _CUDA_MIX[(cell, bias, on_cuda)]
    error = _product_device_error(x, h, w_ih, w_hh, b_ih, b_hh, bias_in_cuda_products=cell == "rnn")
    assert str(error) == (
        f"Expected all tensors to be on the same device, but got {name} is on {device}, different "
        f"from other tensors on {others} (when checking argument in method wrapper_CUDA_{op})")
